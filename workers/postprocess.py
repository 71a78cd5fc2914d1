"""Pillow post-processing: watermark, format conversion, thumbnail.

Every file written is content-addressed like the original: its name is the SHA-256
of (the original's request key, the canonical post-processing spec, the watermark
file's own SHA-256). So the same request with the same post-processing always names
the same files, a re-run finds them instead of redoing them, and changing the
watermark image gives new names instead of silently overwriting old posters.
Writes go through :class:`~workers.storage.ImageStore` (temp file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from rq import get_current_job

from zimg_queue import watermarks
from zimg_queue.options import Postprocess, Watermark, resolve_watermark
from zimg_queue.request import ValidationError

from .imaging import encode
from .storage import ImageStore


@lru_cache(maxsize=16)
def _watermark_image(path: str, mtime: float) -> tuple[Image.Image, str]:
    """The watermark as RGBA plus its file's SHA-256; cached per process until the file changes."""
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        rgba = img.convert("RGBA")
    return rgba, hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=16)
def _watermark_from_redis(digest: str, connection: Any) -> tuple[Image.Image, str] | None:
    data = watermarks.fetch(connection, digest)
    if data is None:
        return None
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGBA"), digest


def load_watermark(spec: Watermark | str) -> tuple[Image.Image, str]:
    """The watermark as RGBA and its SHA-256: by content from Redis when the producer sent a digest, else by name.

    With a digest, the worker needs none of the producer's configuration (``zimg_queue.watermarks``);
    a name alone is resolved against this worker's ``ZIMG_PRESETS`` / ``ZIMG_WATERMARK_DIR``.
    :class:`~zimg_queue.request.ValidationError` when neither finds it (the job fails without retries).
    """
    spec = Watermark(spec) if isinstance(spec, str) else spec
    if spec.sha256:
        job = get_current_job()
        found = _watermark_from_redis(spec.sha256, job.connection) if job is not None else None
        if found is not None:
            return found
        try:
            path = resolve_watermark(spec.name)
        except ValidationError:
            raise ValidationError.single(
                "postprocess.watermark",
                f"watermark {spec.name!r} (sha256 {spec.sha256[:12]}...) is no longer in Redis and not configured "
                "on this worker: enqueue the job again",
            ) from None
    else:
        path = resolve_watermark(spec.name)
    return _watermark_image(str(path), path.stat().st_mtime)


def derived_key(source_key: str, post: Postprocess, watermark_sha256: str | None, role: str = "final") -> str:
    post_spec = asdict(post)
    if post_spec.get("watermark"):  # the image is named by watermark_sha256 below, however it arrived
        post_spec["watermark"].pop("sha256", None)
    spec = {"source": source_key, "post": post_spec, "watermark": watermark_sha256, "role": role}
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def place(size: tuple[int, int], mark: tuple[int, int], position: str, margin_px: int) -> tuple[int, int]:
    """Top-left corner of a ``mark``-sized box at ``position`` inside ``size``, ``margin_px`` from the edges."""
    (w, h), (mw, mh) = size, mark
    xs = {"left": margin_px, "center": (w - mw) // 2, "right": w - mw - margin_px}
    ys = {"top": margin_px, "center": (h - mh) // 2, "bottom": h - mh - margin_px}
    vertical, _, horizontal = position.partition("-")
    if not horizontal:  # "top", "left", "center", ...
        vertical, horizontal = (vertical, "center") if vertical in ys else ("center", vertical)
    return max(0, xs[horizontal]), max(0, ys[vertical])


def watermark(image: Image.Image, mark: Image.Image, spec: Watermark) -> Image.Image:
    """``image`` with ``mark`` scaled to ``spec.scale`` of its width and ``spec.opacity`` over it."""
    base = image.convert("RGBA")
    width = max(1, round(base.width * spec.scale))
    height = max(1, round(mark.height * width / mark.width))
    scaled = mark.resize((width, height), Image.Resampling.LANCZOS)
    if spec.opacity < 1:
        alpha = scaled.getchannel("A").point(lambda a: round(a * spec.opacity))
        scaled.putalpha(alpha)
    margin = round(min(base.size) * spec.margin)
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    layer.paste(scaled, place(base.size, scaled.size, spec.position, margin))
    return Image.alpha_composite(base, layer)


def _entry(role: str, key: str, fmt: str, path: Path, data: bytes, image: Image.Image) -> dict[str, Any]:
    return {
        "role": role,
        "path": str(path),
        "key": key,
        "format": fmt,
        "width": image.width,
        "height": image.height,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _write_or_find(store: ImageStore, key: str, fmt: str, quality: int, make: Any) -> tuple[Path, bytes, Image.Image]:
    found = store.find(key, fmt)
    if found is not None:
        data = found.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return found, data, img.copy()
    image = make()
    data = encode(image, fmt, quality=quality)
    return store.write(key, fmt, data), data, image


def apply(
    original: Image.Image, source_key: str, source_format: str, post: Postprocess, store: ImageStore
) -> list[dict[str, Any]]:
    """Write the post-processed image (and thumbnail); return one entry per file, final image first.

    Files already in the store are reused, so a retried or repeated job costs no Pillow work.
    """
    mark, mark_sha = load_watermark(post.watermark) if post.watermark else (None, None)
    fmt = post.format or source_format
    key = derived_key(source_key, post, mark_sha)

    def make_final() -> Image.Image:
        image = ImageOps.exif_transpose(original) or original
        if mark is not None and post.watermark is not None:
            image = watermark(image, mark, post.watermark)
        return image.convert("RGB") if fmt == "jpeg" or original.mode == "RGB" else image

    path, data, final = _write_or_find(store, key, fmt, post.quality, make_final)
    files = [_entry("final", key, fmt, path, data, final)]
    if post.thumbnail:
        thumb_key = derived_key(source_key, post, mark_sha, role=f"thumbnail-{post.thumbnail}")

        side = post.thumbnail

        def make_thumb() -> Image.Image:
            thumb = final.copy()
            thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
            return thumb

        tpath, tdata, timage = _write_or_find(store, thumb_key, fmt, post.quality, make_thumb)
        files.append(_entry("thumbnail", thumb_key, fmt, tpath, tdata, timage))
    return files
