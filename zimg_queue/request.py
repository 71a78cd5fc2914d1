"""``GenerateRequest``: the one schema every entry point validates with.

The fields are those of the upstream Z-Image-Turbo server's ``POST /v1/generate``.
Validation collects *every* problem and raises one :class:`ValidationError` whose
message names each field and the rule it broke, so a Flask view can hand it to
its client as-is. The JSON Schema used by the OpenAPI document is generated from
the same table (:func:`json_schema`), so docs and checks cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
SIZE_STEP = 64
MIN_SIZE, MAX_SIZE = 64, 2048
FORMATS = ("png", "jpeg", "webp")
DEFAULT_MAX_PIXELS = 2048 * 2048


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
