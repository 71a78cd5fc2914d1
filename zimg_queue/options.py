"""``JobOptions``: what a job does *around* inference, carried beside the request.

:class:`~zimg_queue.request.GenerateRequest` is the upstream server's contract and
rejects unknown fields, so presets, post-processing, webhooks and storage travel in
a second, small JSON argument of the job (``workers.job.generate(request, options)``).

Nothing here accepts a filesystem path from a client: a watermark is named, and the
name is resolved against files the operator configured (the ``[watermarks]`` table of
the presets file, or ``ZIMG_WATERMARK_DIR/<name>.png``), see :func:`resolve_watermark`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .request import FORMATS, ValidationError

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
POSITIONS = ("top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom", "bottom-right")
STORAGES = ("local", "s3")
MAX_URL = 2048


def _errors_for(prefix: str, exc: ValidationError) -> list[dict[str, str]]:
    return [{**e, "field": f"{prefix}.{e['field']}"} for e in exc.errors]


def _number(errors: list, name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        errors.append({"field": name, "message": f"must be a number between {lo} and {hi} (got {value!r})"})
        return lo
    return float(value)


def _unknown(errors: list, data: Mapping[str, Any], known: set[str], prefix: str = "") -> None:
    errors.extend({"field": f"{prefix}{k}", "message": "unknown field"} for k in data if k not in known)


@dataclass(frozen=True)
class Watermark:
    """A named watermark image, pasted ``scale`` x the image width, ``margin`` x the short side from the edge."""

    name: str
    position: str = "bottom-right"
    margin: float = 0.03
    opacity: float = 0.8
    scale: float = 0.2

    @classmethod
    def from_dict(cls, data: Any) -> Watermark:
        if isinstance(data, str):
            data = {"name": data}
        if not isinstance(data, Mapping):
            raise ValidationError.single("watermark", "must be a name or an object with a name")
        errors: list[dict[str, str]] = []
        _unknown(errors, data, {"name", "position", "margin", "opacity", "scale"})
        name = data.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            errors.append({"field": "name", "message": "must be a configured watermark name ([A-Za-z0-9_-])"})
        position = data.get("position", cls.position)
        if position not in POSITIONS:
            errors.append({"field": "position", "message": f"must be one of {', '.join(POSITIONS)}"})
        margin = _number(errors, "margin", data.get("margin", cls.margin), 0.0, 0.5)
        opacity = _number(errors, "opacity", data.get("opacity", cls.opacity), 0.0, 1.0)
        scale = _number(errors, "scale", data.get("scale", cls.scale), 0.01, 1.0)
        if errors:
            raise ValidationError(errors)
        return cls(name, position, margin, opacity, scale)


@dataclass(frozen=True)
class Postprocess:
    """Pillow steps after inference: watermark, then format conversion, then an optional thumbnail."""

    watermark: Watermark | None = None
    format: str | None = None
    quality: int = 90
    #: Longest side of the thumbnail in pixels; ``None`` writes none.
    thumbnail: int | None = None

    @classmethod
    def from_dict(cls, data: Any) -> Postprocess:
        if not isinstance(data, Mapping):
            raise ValidationError.single("postprocess", "must be an object")
        errors: list[dict[str, str]] = []
        _unknown(errors, data, {"watermark", "format", "quality", "thumbnail"})
        watermark = None
        if data.get("watermark") is not None:
            try:
                watermark = Watermark.from_dict(data["watermark"])
            except ValidationError as exc:
                errors.extend(_errors_for("watermark", exc) if exc.errors[0]["field"] != "watermark" else exc.errors)
        fmt = data.get("format")
        if fmt is not None:
            fmt = str(fmt).lower().replace("jpg", "jpeg")
            if fmt not in FORMATS:
                errors.append({"field": "format", "message": f"must be one of {', '.join(FORMATS)}"})
        quality = data.get("quality", cls.quality)
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            errors.append({"field": "quality", "message": f"must be an integer 1-100 (got {quality!r})"})
        thumb = data.get("thumbnail")
        if thumb is not None and (isinstance(thumb, bool) or not isinstance(thumb, int) or not 16 <= thumb <= 2048):
            errors.append({"field": "thumbnail", "message": f"must be an integer 16-2048 (got {thumb!r})"})
        if errors:
            raise ValidationError(errors)
        return cls(watermark, fmt, quality, thumb)

    def merged(self, over: Postprocess | None) -> Postprocess:
        """``over``'s set fields win (a request refining its preset's post-processing)."""
        if over is None:
            return self
        return Postprocess(
            watermark=over.watermark or self.watermark,
            format=over.format or self.format,
            quality=over.quality if over.quality != Postprocess.quality else self.quality,
            thumbnail=over.thumbnail or self.thumbnail,
        )

    @property
    def empty(self) -> bool:
        return self.watermark is None and self.format is None and self.thumbnail is None


@dataclass(frozen=True)
class JobOptions:
    """Everything a job carries besides the request. Build with :meth:`from_dict`; JSON via :meth:`to_dict`."""

    preset: str | None = None
    placeholders: Mapping[str, str] = field(default_factory=dict)
    postprocess: Postprocess | None = None
    webhook_url: str | None = None
    storage: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> JobOptions:
        """Validate ``data``; raise one :class:`ValidationError` naming every bad field (``options.<field>``)."""
        if data is None:
            return cls()
        if isinstance(data, JobOptions):
            return data
        if not isinstance(data, Mapping):
            raise ValidationError.single("options", "must be an object")
        errors: list[dict[str, str]] = []
        _unknown(errors, data, {"preset", "placeholders", "postprocess", "webhook_url", "storage"}, "options.")
        preset = data.get("preset")
        if preset is not None and (not isinstance(preset, str) or not NAME_RE.match(preset)):
            errors.append({"field": "options.preset", "message": "must be a preset name ([A-Za-z0-9_-])"})
        placeholders = data.get("placeholders") or {}
        if not isinstance(placeholders, Mapping):
            errors.append({"field": "options.placeholders", "message": "must be an object of strings"})
            placeholders = {}
        clean: dict[str, str] = {}
        for key, value in placeholders.items():
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                errors.append({"field": f"options.placeholders.{key}", "message": "must be a string"})
            else:
                clean[str(key)] = str(value)
        post = None
        if data.get("postprocess") is not None:
            try:
                post = Postprocess.from_dict(data["postprocess"])
            except ValidationError as exc:
                errors.extend(_errors_for("options.postprocess", exc))
        url = data.get("webhook_url")
        if url is not None:
            parsed = urlparse(url) if isinstance(url, str) else None
            if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc or len(url) > MAX_URL:
                errors.append({"field": "options.webhook_url", "message": "must be an http:// or https:// URL"})
        storage = data.get("storage")
        if storage is not None and storage not in STORAGES:
            errors.append({"field": "options.storage", "message": f"must be one of {', '.join(STORAGES)}"})
        if errors:
            raise ValidationError(errors)
        return cls(preset, clean, post, url, storage)

    def to_dict(self) -> dict[str, Any]:
        """Only the set fields, so job arguments stay small."""
        if not (self.preset or self.placeholders or self.postprocess or self.webhook_url or self.storage):
            return {}  # the common case, on the enqueue hot path: skip asdict()
        out = {k: v for k, v in asdict(self).items() if v not in (None, {})}
        if "postprocess" in out:
            out["postprocess"] = {
                k: v for k, v in out["postprocess"].items() if v is not None and not (k == "quality" and v == 90)
            }
            wm = out["postprocess"].get("watermark")
            if wm:
                out["postprocess"]["watermark"] = {k: v for k, v in wm.items() if getattr(Watermark, k, None) != v}
            if not out["postprocess"]:
                del out["postprocess"]
        if "placeholders" in out:
            out["placeholders"] = dict(out["placeholders"])
        return out

    @property
    def empty(self) -> bool:
        return not self.to_dict()


def watermark_sources(presets: str | os.PathLike[str] | None = None) -> tuple[dict[str, Path], Path | None]:
    """The operator's watermarks: the presets file's ``[watermarks]`` table and ``ZIMG_WATERMARK_DIR``."""
    table: dict[str, Path] = {}
    from .settings import Settings

    settings = Settings()
    if presets or settings.presets:
        from .presets import load_presets

        table = dict(load_presets(presets).watermarks)
    folder = settings.watermark_dir
    return table, Path(folder) if folder else None


def resolve_watermark(name: str, presets: str | os.PathLike[str] | None = None) -> Path:
    """The file behind a watermark name; :class:`ValidationError` when the operator configured none by that name.

    The name is checked against ``[A-Za-z0-9_-]`` first, so it can never walk out of the folder.
    """
    if not NAME_RE.match(name or ""):
        raise ValidationError.single("postprocess.watermark.name", "must be a configured watermark name")
    table, folder = watermark_sources(presets)
    if name in table and table[name].is_file():
        return table[name]
    if folder is not None:
        for ext in ("png", "webp"):
            path = folder / f"{name}.{ext}"
            if path.is_file():
                return path
    known = sorted(set(table) | ({p.stem for p in folder.glob("*.png")} if folder and folder.is_dir() else set()))
    raise ValidationError.single(
        "postprocess.watermark.name", f"no watermark named {name!r} is configured (known: {', '.join(known) or 'none'})"
    )
