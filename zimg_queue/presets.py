"""Presets: named prompt templates with defaults, from a TOML file the operator owns.

The file is ``$ZIMG_PRESETS`` (read with :mod:`tomllib`, no extra dependency)::

    [defaults]                       # optional: every preset starts from these
    negative_prompt = "blurry, low quality, watermark text"
    num_inference_steps = 8

    [watermarks]                     # name -> file, relative to this file
    brand = "brand.png"

    [presets.main]
    prompt = "Studio product photo of {title}, {selling_point}, clean white background"
    width = 1024
    height = 1024
    postprocess = { watermark = { name = "brand", position = "bottom-right" }, format = "jpeg", quality = 90 }

    [schedules.daily]                # see zimg_queue.schedules
    cron = "0 6 * * *"
    items = "products.csv"
    presets = ["main", "detail", "social"]

Placeholders are ``{name}`` fields in ``prompt`` and ``negative_prompt``. Only plain
identifiers are allowed (``{title.__class__}`` or ``{0}`` are rejected when the file
loads), so a template can never reach into Python objects. A request that leaves a
placeholder empty, or fills one the preset does not have, gets a :class:`ValidationError`
naming it.
"""

from __future__ import annotations

import os
import re
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .options import NAME_RE, Postprocess
from .request import SCHEMA, ValidationError
from .settings import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
TEMPLATE_FIELDS = ("prompt", "negative_prompt")
#: Request fields a preset may fix (``seed`` only for reproducible series; campaigns derive one per job).
PRESET_FIELDS = {"prompt", "negative_prompt", "width", "height", "num_inference_steps", "seed", "output_format"}
MAX_PLACEHOLDER_CHARS = 500


class PresetError(ValueError):
    """The presets file itself is wrong (an operator error, not a client one)."""


def placeholders_of(template: str, where: str) -> frozenset[str]:
    """The ``{name}`` fields of ``template``; :class:`PresetError` for anything but plain identifiers."""
    names: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise PresetError(f"{where}: bad template: {exc}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not IDENT_RE.match(name) or spec or conversion:
            raise PresetError(f"{where}: placeholder {{{name}}} must be a plain name like {{title}}")
        names.add(name)
    return frozenset(names)


@dataclass(frozen=True)
class Preset:
    """One named template. :meth:`render` turns placeholder values into a request dict."""

    name: str
    fields: Mapping[str, Any]
    postprocess: Postprocess | None = None
    placeholders: frozenset[str] = frozenset()
    description: str = ""

    def render(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        strict: bool = True,
        overrides: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The request dict: templates filled from ``values``, then ``overrides`` on top.

        ``strict`` rejects values the preset has no placeholder for (a typo in an API
        call); campaigns pass ``strict=False`` because one CSV row feeds several presets.
        """
        values = dict(values or {})
        errors: list[dict[str, str]] = []
        for name in sorted(self.placeholders):
            value = values.get(name)
            if value is None or not str(value).strip():
                errors.append({"field": f"placeholders.{name}", "message": f"is required by preset {self.name!r}"})
            elif len(str(value)) > MAX_PLACEHOLDER_CHARS:
                errors.append({"field": f"placeholders.{name}", "message": f"must be at most {MAX_PLACEHOLDER_CHARS}"})
        if strict:
            expected = ", ".join(sorted(self.placeholders)) or "none"
            errors.extend(
                {
                    "field": f"placeholders.{name}",
                    "message": f"unknown placeholder for preset {self.name!r} (it takes: {expected})",
                }
                for name in sorted(set(values) - self.placeholders)
            )
        if errors:
            raise ValidationError(errors)
        clean = {k: str(values[k]).strip() for k in self.placeholders}
        request = dict(self.fields)
        for key in TEMPLATE_FIELDS:
            if key in request:
                request[key] = request[key].format_map(clean)
        request.update(overrides or {})
        return request


@dataclass(frozen=True)
class PresetFile:
    """A parsed presets file: presets, named watermark files and raw schedule tables."""

    path: Path | None
    presets: Mapping[str, Preset]
    watermarks: Mapping[str, Path] = field(default_factory=dict)
    schedules: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def get(self, name: str) -> Preset:
        """The preset, or a :class:`ValidationError` on ``preset`` listing the known ones."""
        if name not in self.presets:
            known = ", ".join(sorted(self.presets)) or "none configured"
            raise ValidationError.single("preset", f"unknown preset {name!r} (known: {known})")
        return self.presets[name]

    def resolve(self, path: str) -> Path:
        """A path from the file (items, watermarks), relative to the file's own folder."""
        p = Path(path)
        return p if p.is_absolute() or self.path is None else self.path.parent / p


def _preset(name: str, table: Any, defaults: Mapping[str, Any]) -> Preset:
    where = f"presets.{name}"
    if not NAME_RE.match(name):
        raise PresetError(f"{where}: preset names are [A-Za-z0-9_-]")
    if not isinstance(table, Mapping):
        raise PresetError(f"{where}: must be a table")
    merged = {**defaults, **table}
    if "format" in merged:  # friendlier spelling
        merged["output_format"] = merged.pop("format")
    description = str(merged.pop("description", ""))
    post = merged.pop("postprocess", None)
    unknown = set(merged) - PRESET_FIELDS
    if unknown:
        raise PresetError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if "prompt" not in merged:
        raise PresetError(f"{where}: needs a prompt template")
    names: frozenset[str] = frozenset()
    for key in TEMPLATE_FIELDS:
        if key in merged:
            if not isinstance(merged[key], str):
                raise PresetError(f"{where}.{key}: must be a string")
            names |= placeholders_of(merged[key], f"{where}.{key}")
    try:
        postprocess = Postprocess.from_dict(post) if post is not None else None
    except ValidationError as exc:
        raise PresetError(f"{where}.postprocess: {exc}") from None
    # Check the fixed fields with the request schema (a dummy prompt stands in for the template).
    from .request import GenerateRequest

    sample = {k: v for k, v in merged.items() if k in SCHEMA}
    sample.update(prompt="x", negative_prompt="")
    try:
        GenerateRequest.from_dict(sample)
    except ValidationError as exc:
        raise PresetError(f"{where}: {exc}") from None
    return Preset(name, merged, postprocess, names, description)


def parse_presets(data: Mapping[str, Any], path: Path | None = None) -> PresetFile:
    """A :class:`PresetFile` from an already-parsed TOML document."""
    unknown = set(data) - {"defaults", "presets", "watermarks", "schedules"}
    if unknown:
        raise PresetError(f"unknown top-level table(s): {', '.join(sorted(unknown))}")
    defaults = data.get("defaults", {})
    presets = {name: _preset(name, table, defaults) for name, table in data.get("presets", {}).items()}
    base = path.parent if path else Path.cwd()
    watermarks: dict[str, Path] = {}
    for name, file in data.get("watermarks", {}).items():
        if not NAME_RE.match(name) or not isinstance(file, str):
            raise PresetError(f"watermarks.{name}: names are [A-Za-z0-9_-], values file paths")
        watermarks[name] = (base / file).resolve()
    schedules = data.get("schedules", {})
    if not isinstance(schedules, Mapping) or not all(isinstance(v, Mapping) for v in schedules.values()):
        raise PresetError("schedules: must be tables")
    return PresetFile(path, presets, watermarks, dict(schedules))


_cache: dict[str, tuple[float, PresetFile]] = {}


def load_presets(path: str | os.PathLike[str] | None = None) -> PresetFile:
    """Load (and cache until the file changes) ``path`` or ``$ZIMG_PRESETS``; an empty set when neither is set."""
    raw = path if path is not None else Settings().presets
    if not raw:
        return PresetFile(None, {})
    p = Path(raw).resolve()
    try:
        mtime = p.stat().st_mtime
    except OSError as exc:
        raise PresetError(f"cannot read presets file {p}: {exc}") from None
    hit = _cache.get(str(p))
    if hit and hit[0] == mtime:
        return hit[1]
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"{p}: {exc}") from None
    loaded = parse_presets(data, p)
    _cache[str(p)] = (mtime, loaded)
    return loaded
