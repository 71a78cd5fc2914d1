"""``JobOptions``: what a job does *around* inference, carried beside the request.

:class:`~zimg_queue.request.GenerateRequest` is the upstream server's contract and
rejects unknown fields, so presets, post-processing, webhooks and storage travel in
a second, small JSON argument of the job (``workers.job.generate(request, options)``).

Nothing here accepts a filesystem path from a client: a watermark is named, and the
name is resolved against files the operator configured (the ``[watermarks]`` table of
the presets file, or ``ZIMG_WATERMARK_DIR/<name>.png``), see :func:`resolve_watermark`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, ConfigDict, Field, Strict
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic.json_schema import JsonDict

from .validation import INTEGRAL, NAME_PATTERN, URL_PATTERN, Checker, ValidationError

if TYPE_CHECKING:
    from .settings import Settings

#: ``re.match`` with ``\Z``: Python's ``$`` would also accept a trailing newline.
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
Position = Literal["top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom", "bottom-right"]
POSITIONS: tuple[str, ...] = get_args(Position)
Storage = Literal["local", "s3"]
STORAGES: tuple[str, ...] = get_args(Storage)
MAX_URL = 2048
DEFAULT_QUALITY = 90

Name = Annotated[str, Strict(), Field(pattern=NAME_PATTERN, description="A name the operator configured.")]
Fraction = Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)]


def _named(value: Any) -> Any:
    """A watermark may be given by its name alone: ``"brand"`` is ``{"name": "brand"}``."""
    return {"name": value} if isinstance(value, str) else value


def _jpg_is_jpeg(value: Any) -> Any:
    return "jpeg" if value == "jpg" else value


def _no_placeholders(value: Any) -> Any:
    return {} if value is None else value


def _placeholder_text(value: Any) -> Any:
    """Placeholder values are text; a number (never a bool) is written as text, as a CSV cell would be."""
    if type(value) in (int, float):
        return str(value)
    return value


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid", title="Watermark"))
class Watermark:
    """A named watermark image, pasted ``scale`` x the image width, ``margin`` x the short side from the edge."""

    name: Name
    position: Position = "bottom-right"
    margin: Annotated[float, Strict(), Field(ge=0.0, le=0.5, allow_inf_nan=False)] = 0.03
    opacity: Fraction = 0.8
    scale: Annotated[float, Strict(), Field(ge=0.01, le=1.0, allow_inf_nan=False)] = 0.2
    #: Set by the producer that resolved ``name`` (a client's value is replaced): workers read the image
    #: from Redis by this digest (``zimg_queue.watermarks``), so they need none of the producer's configuration.
    sha256: (
        Annotated[
            str, Strict(), Field(pattern=r"^[0-9a-f]{64}$", description="Set by the producer; the image's SHA-256.")
        ]
        | None
    ) = None

    @classmethod
    def from_dict(cls, data: Any) -> Watermark:
        """A watermark from its name or an object; :class:`ValidationError` naming the bad fields."""
        result: Watermark = _checker(cls, "watermark").validate(_named(data))
        return result


WatermarkSpec = Annotated[
    Watermark | None,
    BeforeValidator(_named, json_schema_input_type=Name | Watermark | None),
    Field(description="A configured watermark, by name or with placement."),
]
ImageFormat = Annotated[
    Literal["png", "jpeg", "webp", "jpg"] | None,
    BeforeValidator(_jpg_is_jpeg),
    Field(description="Convert the final image; lowercase, jpg is read as jpeg."),
]


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid", title="Postprocess"))
class Postprocess:
    """Pillow steps after inference: watermark, then format conversion, then an optional thumbnail."""

    watermark: WatermarkSpec = None
    format: ImageFormat = None
    quality: Annotated[int, Field(ge=1, le=100, description="JPEG/WebP quality."), INTEGRAL] = DEFAULT_QUALITY
    #: Longest side of the thumbnail in pixels; ``None`` writes none.
    thumbnail: Annotated[int, Field(ge=16, le=2048), INTEGRAL] | None = None

    @classmethod
    def from_dict(cls, data: Any) -> Postprocess:
        """Validate ``data``; :class:`ValidationError` names each bad field (``watermark.name``, ``quality``)."""
        result: Postprocess = _checker(cls, "postprocess").validate(data)
        return result

    def merged(self, over: Postprocess | None) -> Postprocess:
        """``over``'s set fields win (a request refining its preset's post-processing)."""
        if over is None:
            return self
        return Postprocess(
            watermark=over.watermark or self.watermark,
            format=over.format or self.format,
            quality=over.quality if over.quality != DEFAULT_QUALITY else self.quality,
            thumbnail=over.thumbnail or self.thumbnail,
        )

    @property
    def empty(self) -> bool:
        return self.watermark is None and self.format is None and self.thumbnail is None


#: Non-empty ``placeholders`` fill a preset's template: they need ``preset``.
_PLACEHOLDERS_NEED_PRESET: JsonDict = {
    "if": {"required": ["placeholders"], "properties": {"placeholders": {"type": "object", "minProperties": 1}}},
    "then": {"required": ["preset"], "properties": {"preset": {"type": "string"}}},
}


@pydantic_dataclass(
    frozen=True, config=ConfigDict(extra="forbid", title="JobOptions", json_schema_extra=_PLACEHOLDERS_NEED_PRESET)
)
class JobOptions:
    """Everything a job carries besides the request: preset, post-processing, webhook, storage."""

    preset: Name | None = None
    placeholders: Annotated[
        dict[str, Annotated[str, BeforeValidator(_placeholder_text, json_schema_input_type=str | float)]],
        BeforeValidator(_no_placeholders, json_schema_input_type=dict[str, str | float] | None),
        Field(description="Values for the preset's {name} fields (needs preset)."),
    ] = dataclasses.field(default_factory=dict)
    postprocess: Postprocess | None = None
    webhook_url: (
        Annotated[
            str,
            Strict(),
            Field(
                max_length=MAX_URL,
                pattern=URL_PATTERN,
                description="POSTed the job's status when it ends, signed. Unless ZIMG_WEBHOOK_ALLOW_PRIVATE is set, "
                "localhost and loopback, private or link-local addresses are refused (literals here, names after DNS).",
            ),
        ]
        | None
    ) = None
    storage: Annotated[Storage | None, Field(description="Where the image goes besides the local folder.")] = None

    @classmethod
    def from_dict(cls, data: Any) -> JobOptions:
        """Validate ``data``; raise one :class:`ValidationError` naming every bad field (``options.<field>``)."""
        if data is None:
            return cls()
        if isinstance(data, JobOptions):
            return data
        opts: JobOptions = _checker(cls, "options").validate(data, prefix="options.")
        if opts.placeholders and not opts.preset:  # the schema's if/then (_PLACEHOLDERS_NEED_PRESET)
            raise ValidationError.single("options.placeholders", "need options.preset")
        return opts

    def to_dict(self) -> dict[str, Any]:
        """Only the set fields, so job arguments stay small."""
        if not (self.preset or self.placeholders or self.postprocess or self.webhook_url or self.storage):
            return {}  # the common case, on the enqueue hot path: skip asdict()
        out = {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, {})}
        if "postprocess" in out:
            out["postprocess"] = {
                k: v
                for k, v in out["postprocess"].items()
                if v is not None and not (k == "quality" and v == DEFAULT_QUALITY)
            }
            wm = out["postprocess"].get("watermark")
            if wm:
                defaults = {f.name: f.default for f in dataclasses.fields(Watermark)}
                out["postprocess"]["watermark"] = {k: v for k, v in wm.items() if defaults.get(k) != v}
            if not out["postprocess"]:
                del out["postprocess"]
        if "placeholders" in out:
            out["placeholders"] = dict(out["placeholders"])
        return out

    @property
    def empty(self) -> bool:
        return not self.to_dict()


_CHECKERS: dict[type, Checker] = {}


def _checker(cls: type, root: str) -> Checker:
    checker = _CHECKERS.get(cls)
    if checker is None:
        checker = _CHECKERS[cls] = Checker(cls, root=root)
    return checker


def watermark_sources(
    presets: str | os.PathLike[str] | None = None, settings: Settings | None = None
) -> tuple[dict[str, Path], Path | None]:
    """The operator's watermarks: the presets file's ``[watermarks]`` table and ``ZIMG_WATERMARK_DIR``.

    ``settings`` are the caller's own (a :class:`~zimg_queue.queue.Producer`'s, which a Flask app builds from
    its ``app.config``): with them the environment is not read again, so a folder set only in ``app.config``
    counts. Without them (a worker, a script) the settings come from the environment and ``.env``. ``presets``
    wins over the settings' presets file (a producer's ``presets_path`` may be changed after it was built).
    """
    table: dict[str, Path] = {}
    if settings is None:
        from .settings import Settings

        settings = Settings()
    path = presets if presets is not None else settings.presets
    if path:
        from .presets import load_presets

        table = dict(load_presets(path).watermarks)
    folder = settings.watermark_dir
    return table, Path(folder) if folder else None


def resolve_watermark(
    name: str, presets: str | os.PathLike[str] | None = None, settings: Settings | None = None
) -> Path:
    """The file behind a watermark name; :class:`ValidationError` when the operator configured none by that name.

    The name is checked against ``[A-Za-z0-9_-]`` first, so it can never walk out of the folder. ``presets``
    and ``settings`` are :func:`watermark_sources`'s.
    """
    if not NAME_RE.match(name or ""):
        raise ValidationError.single("postprocess.watermark.name", "must be a configured watermark name")
    table, folder = watermark_sources(presets, settings)
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
