"""Reading a request body into a JSON object, with a 4xx answer for every way it can be bad.

The API promises that nothing a client sends produces a 5xx. Everything that can go wrong
between the socket and :meth:`GenerateRequest.from_dict` is caught here and turned into an
:class:`ApiError` naming the ``body`` (or the field at fault): too large, not UTF-8, not
JSON, NaN or Infinity, absurdly nested, not an object, or strings that cannot be encoded
(lone surrogates from ``\\ud800`` escapes would otherwise fail deep inside Redis).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Request, Response, jsonify

from ..request import ValidationError


class ApiError(Exception):
    """An answer with a JSON body: ``{"error": code, "message": ..., "errors": [...]}``."""

    def __init__(
        self,
        http_status: int,
        code: str,
        message: str,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(message)
        self.headers = headers or {}
        self.http_status = http_status
        self.code = code
        self.message = message
        self.errors = errors
        self.extra = extra

    @classmethod
    def invalid(cls, exc: ValidationError, http_status: int = 400) -> ApiError:
        body = exc.to_dict()
        return cls(http_status, body["error"], body["message"], body["errors"])

    @classmethod
    def field(cls, field: str, message: str, http_status: int = 400) -> ApiError:
        return cls.invalid(ValidationError.single(field, message), http_status)

    def response(self) -> Response:
        body: dict[str, Any] = {"error": self.code, "message": self.message, **self.extra}
        if self.errors is not None:
            body["errors"] = self.errors
        resp = jsonify(body)
        resp.status_code = self.http_status
        resp.headers.update(self.headers)
        return resp


def take_submission(data: dict[str, Any]) -> tuple[str, str | None, list[dict[str, str]]]:
    """Pop ``priority`` and ``idempotency_key`` off a ``POST /v1/jobs`` body and check them with the
    :class:`~zimg_queue.models.JobSubmission` model (the published schema's rules): ``(priority, key, errors)``.

    ``options`` stays for the producer, which checks it with :class:`~zimg_queue.options.JobOptions`
    after expanding a preset; the rest of the body is the request.
    """
    from ..models import SUBMISSION

    fields = {name: data.pop(name) for name in ("priority", "idempotency_key") if name in data}
    try:
        submission = SUBMISSION.validate(fields)
    except ValidationError as exc:
        return "normal", None, exc.errors
    return submission.priority, submission.idempotency_key, []


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_encodable(value: Any, path: str) -> None:
    """Every string must encode as UTF-8: ``"\\ud800"`` is valid JSON but not valid text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError.field(path, "must be valid Unicode text (lone surrogate escape)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_encodable(key, path)
            _check_encodable(item, key if path == "body" else f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_encodable(item, f"{path}[{i}]")


def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a dict, or :class:`ApiError` (413 when too large, else 400)."""
    too_large = ApiError.field("body", f"must be at most {max_bytes} bytes", http_status=413)
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    raw = request.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise too_large
    if not raw.strip():
        raise ApiError.field("body", "must be a JSON object (the body is empty)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError.field("body", f"must be UTF-8 encoded JSON (bad byte at offset {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError.field("body", "is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers past Python's digit limit
        raise ApiError.field("body", f"is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise ApiError.field("body", f"must be a JSON object (got {type(data).__name__})")
    _check_encodable(data, "body")
    return data
