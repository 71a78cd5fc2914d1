"""``GenerateRequest``: the one model every entry point validates with.

The fields are those of the upstream Z-Image-Turbo server's ``POST /v1/generate``. The
producer, the web API, the worker and the inference server all build it with
:meth:`GenerateRequest.from_dict`, which collects *every* problem into one
:class:`ValidationError` naming each field and the rule it broke. It is a pydantic v2
dataclass: pydantic-core runs the checks, and :func:`json_schema` (what the OpenAPI
document publishes) is written by pydantic from the same field declarations.

Edges, decided here once (``tests/test_differential.py`` holds the server to the schema):

* ``512.0`` is the integer 512 (JSON Schema's ``"integer"`` says so too); ``true``, ``"512"`` and
  ``512.5`` are not integers.
* ``prompt`` must hold a character that is not whitespace; no text holds NUL (``pattern``).
* ``seed`` absent or ``null``: the producer draws one and stores it, so every image can be remade.
* ``output_format`` is lowercase ``png``, ``jpeg`` or ``webp``; ``jpg`` is read as ``jpeg``. ``"PNG"`` is rejected.
* ``guidance_scale`` is ``0`` or ``0.0`` only: Turbo is distilled without classifier-free guidance.
* Unknown fields are rejected (``additionalProperties: false``).
* ``width x height <= max_pixels`` is a deployment setting (``ZIMG_MAX_PIXELS``), checked by
  :meth:`~GenerateRequest.from_dict`; its default (2048²) never binds within the size bounds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, Strict
from pydantic.dataclasses import dataclass as pydantic_dataclass

from .validation import INTEGRAL, PROMPT_PATTERN, TEXT_PATTERN, Checker, ValidationError, integral, rule_error, show

__all__ = ["GenerateRequest", "UpstreamRequest", "ValidationError", "json_schema", "SCHEMA"]

MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
SIZE_STEP = 64
MIN_SIZE, MAX_SIZE = 64, 2048
FORMATS = ("png", "jpeg", "webp")
DEFAULT_MAX_PIXELS = 2048 * 2048
GUIDANCE_MESSAGE = (
    "must be 0.0: Z-Image-Turbo is distilled without classifier-free guidance "
    "and gives black or empty images otherwise (got {value})"
)


def draw_seed() -> int:
    """A seed for a request that named none (``secrets``: not predictable from earlier seeds)."""
    return secrets.randbelow(MAX_SEED + 1)


def _seed(value: Any) -> Any:
    return draw_seed() if value is None else integral(value)


def _nullable(schema: dict[str, Any]) -> None:
    schema["type"] = [schema.get("type", "integer"), "null"]


def _turbo_guidance(value: Any) -> float:
    if type(value) in (int, float) and value == 0:
        return 0.0
    raise rule_error(GUIDANCE_MESSAGE.format(value=show(value)))


def _jpg_is_jpeg(value: Any) -> Any:
    return "jpeg" if value == "jpg" else value


Prompt = Annotated[
    str,
    Strict(),
    Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        pattern=PROMPT_PATTERN,
        description="What to draw: text with at least one non-whitespace character, no NUL.",
    ),
]
NegativePrompt = Annotated[
    str,
    Strict(),
    Field(
        max_length=MAX_PROMPT_CHARS,
        pattern=TEXT_PATTERN,
        description="What to avoid (ignored by Turbo at guidance 0); no NUL.",
    ),
]
Size = Annotated[
    int,
    Field(
        ge=MIN_SIZE,
        le=MAX_SIZE,
        multiple_of=SIZE_STEP,
        description=f"Pixels, a multiple of {SIZE_STEP}; width x height is at most ZIMG_MAX_PIXELS (default 2048²).",
    ),
    INTEGRAL,
]
Steps = Annotated[int, Field(ge=1, le=50, description="Denoising steps; Turbo is distilled for 8."), INTEGRAL]
Guidance = Annotated[
    float,
    Field(
        json_schema_extra={"enum": [0.0]},
        description="Must be 0.0: Z-Image-Turbo is distilled for 0.0; other values give black or empty images.",
    ),
    BeforeValidator(_turbo_guidance),
]
Seed = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_SEED,
        json_schema_extra=_nullable,
        description="Absent or null: the producer draws one and stores it, so every result can be remade.",
    ),
    BeforeValidator(_seed),
]
OutputFormat = Annotated[
    Literal["png", "jpeg", "webp", "jpg"],
    Field(description="Lowercase; jpg is read as jpeg. The worker converts to webp with Pillow."),
    BeforeValidator(_jpg_is_jpeg),
]
UpstreamFormat = Annotated[
    Literal["png", "jpeg", "jpg"],
    Field(description="What the upstream server encodes; jpg is read as jpeg."),
    BeforeValidator(_jpg_is_jpeg),
]


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid", title="GenerateRequest"))
class GenerateRequest:
    """A text-to-image request: the upstream Z-Image-Turbo server's ``POST /v1/generate`` fields."""

    # Build with from_dict(): it checks the pixel budget too, and names every bad field at once.

    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    width: Size = 1024
    height: Size = 1024
    num_inference_steps: Steps = 8
    guidance_scale: Guidance = 0.0
    seed: Seed = dataclasses.field(default_factory=draw_seed)
    output_format: OutputFormat = "png"

    @classmethod
    def from_dict(cls, data: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> GenerateRequest:
        """Validate ``data`` (a mapping of the request fields); draw a seed when none is given."""
        req: GenerateRequest = _checker(cls).validate(data)
        if req.width * req.height > max_pixels:
            message = f"width x height must be at most {max_pixels} pixels (got {req.width}x{req.height})"
            raise ValidationError.single("width", message)
        return req

    def to_dict(self) -> dict[str, Any]:
        # A flat copy: dataclasses.asdict() deep-copies recursively and was a tenth of enqueue_many's time.
        return {name: getattr(self, name) for name in FIELDS}

    @property
    def key(self) -> str:
        """SHA-256 of the canonical request: the same request always names the same file.

        Python's ``hash()`` is salted per process, so it can never be used for this. The
        bytes hashed must never change: images already stored are found by this key.
        """
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid", title="UpstreamGenerateRequest"))
class UpstreamRequest(GenerateRequest):
    """The inference server's ``POST /v1/generate`` body: the same fields, but only the formats it encodes."""

    output_format: UpstreamFormat = "png"


FIELDS = tuple(f.name for f in dataclasses.fields(GenerateRequest))
_CHECKERS: dict[type, Checker] = {}


def _checker(cls: type) -> Checker:
    checker = _CHECKERS.get(cls)
    if checker is None:
        checker = _CHECKERS[cls] = Checker(cls)
    return checker


def json_schema(model: type[GenerateRequest] = GenerateRequest) -> dict[str, Any]:
    """JSON Schema (Draft 2020-12, the OpenAPI 3.1 dialect) of a generate request, written by pydantic."""
    return _checker(model).schema


#: Field name -> its published JSON Schema (``name in SCHEMA`` asks "is this a request field?").
SCHEMA: dict[str, dict[str, Any]] = dict(json_schema()["properties"])
