"""Checking and converting the image bytes the inference server sends back."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, UnidentifiedImageError

from .errors import BadImage, EmptyImage

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def decode(image_b64: object, width: int, height: int) -> tuple[bytes, Image.Image]:
    """Raw bytes and the opened image; :class:`BadImage` unless it is a real image of ``width x height``.

    A PNG is checked (``verify``: every chunk's checksum) without decoding its pixels, and
    the returned image is opened lazily: when the server's format is the one asked for, the
    bytes are stored as they are and the pixels are never decoded (about 0.4 ms at 256x256).
    """
    if not isinstance(image_b64, str) or not image_b64:
        raise EmptyImage("inference server returned an empty image")
    try:
        raw = base64.b64decode(image_b64, validate=True)
        with Image.open(io.BytesIO(raw)) as checked:
            checked.verify()
        image = Image.open(io.BytesIO(raw))
        if image.format != "PNG":  # PNG's verify checks every chunk's CRC; others need their pixels decoded
            image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BadImage(f"inference server returned data that is not an image: {exc}") from None
    if image.size != (width, height):
        raise BadImage(f"inference server returned a {image.size[0]}x{image.size[1]} image, asked {width}x{height}")
    return raw, image


def encode(image: Image.Image, fmt: str, *, quality: int = 92) -> bytes:
    """Re-encode with Pillow (the upstream server cannot make webp)."""
    out = io.BytesIO()
    if fmt == "jpeg" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    options = {"quality": quality} if fmt in ("jpeg", "webp") else {}
    image.save(out, format=PIL_FORMATS[fmt], **options)
    return out.getvalue()


def format_of(image: Image.Image) -> str | None:
    return {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}.get(image.format or "")
