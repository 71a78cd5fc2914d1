"""What a request body must be before any JSON parser sees it: coding, length and nesting.

Checked once, in a ``before_request`` function, for every route that takes a body (the API,
the dashboard's actions), so the answers are the same whatever parses the JSON afterwards:

* ``Transfer-Encoding`` other than ``chunked`` -> 400 (a server that has not refused it
  already would hand the app coded bytes it cannot read);
* ``Content-Encoding`` other than ``identity`` -> 415 (RFC 7694: the API takes no
  compressed bodies);
* a body that ends before its ``Content-Length`` (the client closed early) -> 400, and
  nothing downstream runs: a truncated upload must never become a job. gunicorn sets
  ``wsgi.input_terminated`` and hands a short body to the app as if it were whole;
* JSON nested deeper than :data:`MAX_DEPTH` -> 400, found with a flat scan before
  ``json.loads`` or pydantic could recurse.

The body is read here (bounded by ``max_body_bytes + 1``) and put back as a ``BytesIO``,
so later readers see exactly what was checked. Slow uploads are not this module's
concern: :mod:`zimg_queue.web.buffering` keeps gunicorn threads free of them.
"""

from __future__ import annotations

import io
import re
from itertools import accumulate

from flask import request

from .body import ApiError
from .extension import get_state

#: Deeper JSON is refused. A job request is at most four levels deep (options.postprocess.watermark).
MAX_DEPTH = 32
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in a JSON text, brackets inside strings ignored.

    A flat scan (no recursion), linear in the body's size: strings are cut out with one
    regex, then the running sum of +1/-1 over the remaining brackets is taken.
    """
    skeleton = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not skeleton:
        return 0
    return max(accumulate(1 if c in b"[{" else -1 for c in skeleton))


def _codings(header: str | None) -> list[str]:
    return [c.strip().lower() for c in (header or "").split(",") if c.strip()]


def check_codings(environ: dict) -> None:
    """Refuse transfer and content codings this API does not decode."""
    unknown = [c for c in _codings(environ.get("HTTP_TRANSFER_ENCODING")) if c != "chunked"]
    if unknown:
        raise ApiError.field("Transfer-Encoding", f"only 'chunked' is supported (got {', '.join(unknown)!r})")
    coded = [c for c in _codings(environ.get("HTTP_CONTENT_ENCODING")) if c != "identity"]
    if coded:
        message = f"compressed bodies are not accepted (got {', '.join(coded)!r}); send plain JSON"
        raise ApiError.field("Content-Encoding", message, http_status=415)


def _declared_length(environ: dict) -> int | None:
    raw = environ.get("CONTENT_LENGTH")
    if raw in (None, ""):
        return None
    try:
        length = int(raw)
    except ValueError:
        raise ApiError.field("Content-Length", "must be a whole number of bytes") from None
    if length < 0:
        raise ApiError.field("Content-Length", "must be a whole number of bytes")
    return length


def _read(stream, limit: int) -> bytes:
    """Up to ``limit`` bytes, stopping early only at end of input."""
    parts, got = [], 0
    while got < limit:
        chunk = stream.read(min(65536, limit - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_whole_body(environ: dict, max_bytes: int) -> bytes | None:
    """Read the body into memory (at most ``max_bytes + 1`` bytes) and put it back; ``None`` when there is none.

    A declared length above ``max_bytes`` is left unread for the 413 answer further on.
    """
    length = _declared_length(environ)
    chunked = "chunked" in _codings(environ.get("HTTP_TRANSFER_ENCODING"))
    if length is not None and length > max_bytes:
        return None
    stream = environ["wsgi.input"]
    if length is not None and not chunked:
        data = _read(stream, length)
        if len(data) < length:
            raise ApiError.field(
                "body", f"ended after {len(data)} of the {length} bytes its Content-Length announced (upload cut short)"
            )
    elif chunked or environ.get("wsgi.input_terminated"):
        data = _read(stream, max_bytes + 1)
    else:
        return None
    environ["wsgi.input"] = io.BytesIO(data)
    if len(data) <= max_bytes:
        environ["CONTENT_LENGTH"] = str(len(data))
    return data


def check_body(max_bytes: int) -> None:
    """The ``before_request`` body for routes that take a body (see the module's docstring)."""
    environ = request.environ
    if environ.get("REQUEST_METHOD") not in BODY_METHODS or environ.get("zimg.transport_checked"):
        return
    environ["zimg.transport_checked"] = True
    check_codings(environ)
    data = read_whole_body(environ, max_bytes)
    if data and (request.mimetype.endswith("json") or data.lstrip()[:1] in (b"{", b"[")):
        if json_depth(data[:max_bytes]) > MAX_DEPTH:
            raise ApiError.field("body", f"is nested too deeply (more than {MAX_DEPTH} levels of arrays or objects)")


def check_request_body() -> None:
    """``before_request`` function: :func:`check_body` with the app's ``ZIMG_MAX_BODY_BYTES``."""
    check_body(get_state().limits.max_body_bytes)
