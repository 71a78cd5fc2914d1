"""How every payload is checked: :class:`ValidationError`, shared field rules, readable messages.

The models (:mod:`zimg_queue.request`, :mod:`zimg_queue.options`, :mod:`zimg_queue.models`)
are pydantic v2 models; pydantic-core runs the checks and writes the JSON Schema from the
same field declarations, so the published schema and the server cannot disagree. This
module holds what they share:

* the edge decisions, written once as field types: an integer is a JSON integer or a
  float with no fraction (``512.0`` is ``512``, as JSON Schema's ``"integer"`` says), never a
  bool or a string; text never holds NUL; a prompt holds a non-blank character. Text rules
  are regular expressions published as the schema's ``pattern`` and run by pydantic-core
  (Rust ``regex``: ``$`` is the end of the text, as in ECMA-262, unlike Python's ``re``);
* :func:`errors_from_pydantic`: pydantic's errors turned into ``{"field", "message"}`` pairs a
  person can read (``"width: must be a multiple of 64 (got 1000)"``), with bounds read from
  the published schema itself, so a message can never quote a rule the schema does not hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BeforeValidator, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

#: Python's whitespace (``str.isspace``), spelled out so ECMA-262, Python ``re`` and Rust ``regex`` agree.
WHITESPACE = r"\t-\r\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
#: Text: any characters but NUL (C APIs, tokenizers and Redis tooling cut strings there).
TEXT_PATTERN = r"^[^\u0000]*$"
#: A prompt: text with at least one character that is not whitespace (a blank prompt is a client bug).
PROMPT_PATTERN = rf"^[^\u0000]*[^\u0000{WHITESPACE}][^\u0000]*$"
#: Names the operator configured (presets, watermarks): they become file and Redis key parts.
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
#: RQ job ids (and so idempotency keys): Redis key parts and URL path segments.
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
#: An absolute http(s) URI in ASCII (RFC 3986): optional userinfo, a DNS name or IPv4 host (IDNs in their
#: xn-- form; no IPv6 literal), an optional port, then printable characters. Whatever matches, urlsplit parses.
URL_PATTERN = (
    r"^https?://(?:[A-Za-z0-9._~%!$&'()*+,;=:-]*@)?[A-Za-z0-9._~%!$&'()*+,;=-]+(?::[0-9]{1,5})?"
    r"(?:[/?#][\u0021-\u007e]*)?$"
)

#: Messages for a pattern mismatch: the pattern says *what*, this says it in words.
PATTERN_MESSAGES: dict[str, Callable[[Any], str]] = {
    TEXT_PATTERN: lambda v: "must not contain NUL characters",
    PROMPT_PATTERN: lambda v: "must not contain NUL characters" if "\x00" in v else "must not be empty",
    NAME_PATTERN: lambda v: "must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'",
    JOB_ID_PATTERN: lambda v: "must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'",
    URL_PATTERN: lambda v: "must be an http:// or https:// URL (ASCII; a host name or IPv4 address)",
}


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


def integral(value: Any) -> Any:
    """``512`` and ``512.0`` are the integer 512 (JSON Schema agrees); ``True``, ``"512"``, ``512.5`` are not."""
    kind = type(value)
    if kind is int:
        return value
    if kind is float and value.is_integer():
        return int(value)
    got = show(value) if kind is float else _kind(value)
    raise rule_error(f"must be an integer (got {got})")


def rule_error(message: str) -> PydanticCustomError:
    """An error whose message is already the one a person reads (raised by our own validators)."""
    return PydanticCustomError("zimg_rule", message)


def show(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error message never echoes a whole oversized input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    """The JSON name of a value's type, as a client sees it."""
    names = {dict: "object", list: "array", type(None): "null", float: "number", int: "integer", str: "string"}
    return "boolean" if isinstance(value, bool) else names.get(type(value), type(value).__name__)


#: Put after the constraints in ``Annotated[int, Field(...), INTEGRAL]``: the field takes integral numbers only.
INTEGRAL = BeforeValidator(integral)


def _join_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _resolve(node: Any, defs: Mapping[str, Any]) -> dict[str, Any]:
    while isinstance(node, dict) and "$ref" in node:
        node = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
    return node if isinstance(node, dict) else {}


def schema_at(schema: Mapping[str, Any], loc: tuple[Any, ...]) -> dict[str, Any]:
    """The JSON Schema of the value at ``loc`` (following ``$ref``, ``anyOf`` and maps), ``{}`` if unknown."""
    defs = schema.get("$defs", {})
    node = _resolve(dict(schema), defs)
    for part in loc:
        branches = [_resolve(b, defs) for b in node.get("anyOf", [node])]
        nxt = None
        for branch in branches:
            props = branch.get("properties", {})
            if isinstance(part, str) and part in props:
                nxt = props[part]
            elif isinstance(branch.get("additionalProperties"), dict):
                nxt = branch["additionalProperties"]
            if nxt is not None:
                break
        if nxt is None:
            return {}
        node = _resolve(nxt, defs)
    for branch in node.get("anyOf", []):  # e.g. ``integer | null``: the rule is on the non-null branch
        branch = _resolve(branch, defs)
        if branch.get("type") not in (None, "null"):
            return {**branch, **{k: v for k, v in node.items() if k != "anyOf"}}
    return node


def _range(rule: Mapping[str, Any], value: Any) -> str:
    lo, hi = rule.get("minimum"), rule.get("maximum")
    if lo is not None and hi is not None:
        return f"must be between {lo} and {hi} (got {show(value)})"
    if lo is not None:
        return f"must be at least {lo} (got {show(value)})"
    return f"must be at most {hi} (got {show(value)})"


#: Messages that quote the published rule (bounds, allowed values): only these look it up.
_NEEDS_RULE = {"greater_than_equal", "less_than_equal", "greater_than", "less_than", "enum", "literal_error"}
_RULES: dict[tuple[int, tuple[Any, ...]], dict[str, Any]] = {}


def _rule_at(schema: Mapping[str, Any], loc: tuple[Any, ...]) -> dict[str, Any]:
    """:func:`schema_at`, remembered: the error path stays cheap (schemas are built once per model)."""
    key = (id(schema), tuple(p for p in loc if not isinstance(p, int)))
    rule = _RULES.get(key)
    if rule is None:
        if len(_RULES) > 4096:  # keys can carry client-chosen names (map keys): stay bounded
            _RULES.clear()
        rule = _RULES[key] = schema_at(schema, key[1])
    return rule


def _message(err: Mapping[str, Any], rule: Mapping[str, Any]) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "zimg_rule":
        return str(err["msg"])
    if kind == "missing":
        return "is required"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return "unknown field"
    if kind in ("dataclass_type", "model_type", "dict_type", "model_attributes_type", "dataclass_exact_type"):
        return f"must be an object (got {_kind(value)})"
    if kind == "string_type":
        return f"must be a string (got {_kind(value)})"
    if kind == "string_unicode":
        return "must be valid Unicode text (lone surrogate)"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        explain = PATTERN_MESSAGES.get(str(ctx.get("pattern")))
        return explain(value) if explain else f"must match {ctx.get('pattern')}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return _range(rule, value)
    if kind == "multiple_of":
        return f"must be a multiple of {ctx.get('multiple_of')} (got {show(value)})"
    if kind in ("float_type", "float_parsing", "int_type", "int_parsing"):
        return f"must be a number (got {_kind(value)})"
    if kind == "finite_number" or (isinstance(value, float) and not math.isfinite(value)):
        return f"must be a finite number (got {show(value)})"
    if kind in ("enum", "literal_error"):
        allowed = rule.get("enum") or [ctx.get("expected")]
        return f"must be one of {', '.join(map(str, allowed))} (got {show(value)})"
    return str(err.get("msg", "is invalid"))


def errors_from_pydantic(
    exc: PydanticValidationError, schema: Mapping[str, Any], prefix: str = "", root: str = "body"
) -> list[dict[str, str]]:
    """``{"field", "message"}`` pairs for ``exc``; ``schema`` is the model's JSON Schema (bounds, enums)."""
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        field = _join_loc(loc)
        message = _message(err, _rule_at(schema, loc) if err["type"] in _NEEDS_RULE else {})
        if not field:
            field = prefix.rstrip(".") or root
            if err["type"] in ("dataclass_type", "model_type", "dict_type", "dataclass_exact_type"):
                message = "must be a JSON object" if field == "body" else "must be an object"
        else:
            field = prefix + field
        out.append({"field": field, "message": message})
    return out


M = TypeVar("M")


class Checker:
    """One model's validator and published schema, with :class:`ValidationError` instead of pydantic's."""

    def __init__(self, model: type[M] | Any, *, root: str = "body"):
        self.adapter: TypeAdapter[Any] = TypeAdapter(model)
        self.root = root
        self._schema: dict[str, Any] | None = None

    @property
    def schema(self) -> dict[str, Any]:
        """The JSON Schema (Draft 2020-12, OpenAPI 3.1's dialect) of what :meth:`validate` accepts."""
        if self._schema is None:
            self._schema = self.adapter.json_schema()
        return self._schema

    def validate(self, data: Any, *, prefix: str = "", context: Mapping[str, Any] | None = None) -> Any:
        try:
            return self.adapter.validate_python(data, context=context)
        except PydanticValidationError as exc:
            raise ValidationError(errors_from_pydantic(exc, self.schema, prefix, self.root)) from None
