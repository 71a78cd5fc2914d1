"""The hand-written validator that pydantic models replaced (zimg_queue/request.py and options.py at 298ee05).

Kept ONLY as the baseline of ``benchmarks/validation.py``, so every run measures old and new side by
side on the same machine. Nothing in the package imports it. Copied verbatim but for the imports.
"""
# ruff: noqa
# mypy: ignore-errors

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse
import re

MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
SIZE_STEP = 64
MIN_SIZE, MAX_SIZE = 64, 2048
FORMATS = ("png", "jpeg", "webp")
DEFAULT_MAX_PIXELS = 2048 * 2048
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
POSITIONS = ("top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom", "bottom-right")
STORAGES = ("local", "s3")
MAX_URL = 2048


class ValidationError(ValueError):
    """A request broke the schema. ``errors`` is a list of ``{"field", "message"}``.

    ``str(error)`` joins them: ``"width: must be a multiple of 64 (got 1000)"``.
    """

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))

    @classmethod
    def single(cls, field: str, message: str) -> ValidationError:
        return cls([{"field": field, "message": message}])

    def to_dict(self) -> dict[str, Any]:
        return {"error": "validation_error", "message": str(self), "errors": self.errors}


# name -> (JSON Schema of the field, default). ``None`` default means required.
SCHEMA: dict[str, tuple[dict[str, Any], Any]] = {
    "prompt": ({"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS}, None),
    "negative_prompt": ({"type": "string", "maxLength": MAX_PROMPT_CHARS}, ""),
    "width": (
        {"type": "integer", "minimum": MIN_SIZE, "maximum": MAX_SIZE, "multipleOf": SIZE_STEP},
        1024,
    ),
    "height": (
        {"type": "integer", "minimum": MIN_SIZE, "maximum": MAX_SIZE, "multipleOf": SIZE_STEP},
        1024,
    ),
    "num_inference_steps": ({"type": "integer", "minimum": 1, "maximum": 50}, 8),
    "guidance_scale": (
        {
            "type": "number",
            "enum": [0.0],
            "description": "Z-Image-Turbo is distilled for 0.0; other values give black or empty images.",
        },
        0.0,
    ),
    "seed": ({"type": "integer", "minimum": 0, "maximum": MAX_SEED}, "random"),
    "output_format": ({"type": "string", "enum": list(FORMATS)}, "png"),
}


def json_schema(extra: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """JSON Schema (OpenAPI 3.1 dialect) of a generate request, plus ``extra`` properties."""
    props: dict[str, Any] = {}
    for name, (schema, default) in SCHEMA.items():
        props[name] = dict(schema)
        if default not in (None, "random"):
            props[name]["default"] = default
    props.update(extra or {})
    return {"type": "object", "required": ["prompt"], "properties": props, "additionalProperties": False}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(errors: list, name: str, value: Any, lo: int, hi: int) -> None:
    if not _is_int(value):
        errors.append({"field": name, "message": f"must be an integer (got {type(value).__name__})"})
    elif not lo <= value <= hi:
        errors.append({"field": name, "message": f"must be between {lo} and {hi} (got {value})"})


def _check_size(errors: list, name: str, value: Any) -> None:
    before = len(errors)
    _check_int(errors, name, value, MIN_SIZE, MAX_SIZE)
    if len(errors) == before and value % SIZE_STEP:
        errors.append({"field": name, "message": f"must be a multiple of {SIZE_STEP} (got {value})"})


def _check_text(errors: list, name: str, value: Any, required: bool) -> None:
    if not isinstance(value, str):
        errors.append({"field": name, "message": f"must be a string (got {type(value).__name__})"})
    elif required and not value.strip():
        errors.append({"field": name, "message": "must not be empty"})
    elif len(value) > MAX_PROMPT_CHARS:
        errors.append({"field": name, "message": f"must be at most {MAX_PROMPT_CHARS} characters"})
    elif "\x00" in value:
        errors.append({"field": name, "message": "must not contain NUL characters"})
    elif not value.isascii() and not _encodes(value):  # "\ud800" is valid JSON but not text: no key, no image
        errors.append({"field": name, "message": "must be valid Unicode text (lone surrogate)"})


def _encodes(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class GenerateRequest:
    """A validated text-to-image request. Build with :meth:`from_dict`; never invalid."""

    prompt: str
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    num_inference_steps: int = 8
    guidance_scale: float = 0.0
    seed: int = 0
    output_format: str = "png"

    @classmethod
    def from_dict(cls, data: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> GenerateRequest:
        """Validate ``data`` (a mapping of the request fields); draw a seed when none is given."""
        if not isinstance(data, Mapping):
            raise ValidationError.single("body", "must be a JSON object")
        errors: list[dict[str, str]] = []
        for name in data:
            if name not in SCHEMA:
                errors.append({"field": str(name), "message": "unknown field"})
        values = {name: data.get(name, default) for name, (_, default) in SCHEMA.items()}
        if "prompt" not in data:
            errors.append({"field": "prompt", "message": "is required"})
        else:
            _check_text(errors, "prompt", values["prompt"], required=True)
        _check_text(errors, "negative_prompt", values["negative_prompt"], required=False)
        _check_size(errors, "width", values["width"])
        _check_size(errors, "height", values["height"])
        if not any(e["field"] in ("width", "height") for e in errors):
            if values["width"] * values["height"] > max_pixels:
                errors.append(
                    {
                        "field": "width",
                        "message": f"width x height must be at most {max_pixels} pixels "
                        f"(got {values['width']}x{values['height']})",
                    }
                )
        _check_int(errors, "num_inference_steps", values["num_inference_steps"], 1, 50)
        guidance = values["guidance_scale"]
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or guidance != 0:
            errors.append(
                {
                    "field": "guidance_scale",
                    "message": f"must be 0.0: Z-Image-Turbo is distilled without classifier-free guidance "
                    f"and gives black or empty images otherwise (got {guidance!r})",
                }
            )
        if values["seed"] == "random" or values["seed"] is None:
            values["seed"] = secrets.randbelow(MAX_SEED + 1)
        _check_int(errors, "seed", values["seed"], 0, MAX_SEED)
        fmt = values["output_format"]
        if not isinstance(fmt, str) or fmt.lower() not in FORMATS and fmt.lower() != "jpg":
            errors.append({"field": "output_format", "message": f"must be one of {', '.join(FORMATS)} (got {fmt!r})"})
        if errors:
            raise ValidationError(errors)
        fmt = fmt.lower().replace("jpg", "jpeg")
        return cls(**{**values, "guidance_scale": 0.0, "output_format": fmt})

    def to_dict(self) -> dict[str, Any]:
        # A flat copy: dataclasses.asdict() deep-copies recursively and was a tenth of enqueue_many's time.
        return {name: getattr(self, name) for name in SCHEMA}

    @property
    def key(self) -> str:
        """SHA-256 of the canonical request: the same request always names the same file.

        Python's ``hash()`` is salted per process, so it can never be used for this.
        """
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


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
