"""Reading a request body without trusting it: encodings, truncation and nesting are the client's errors.

Every refusal here is a 4xx naming the rule, never a 5xx: a ``Content-Encoding`` the server does not
decode (415), a body shorter than its ``Content-Length`` (400: a client that hung up mid-upload must not
get an image, nor a job), and JSON nested deeper than any request of this API can be (400, checked before
parsing, since ``json.loads`` of ~1,000 nested brackets raises ``RecursionError``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

MAX_BODY = 64 * 1024
#: A generate request is one flat object; anything deeper than this is not one.
MAX_DEPTH = 32
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


class BadBody(Exception):
    """The body cannot be read as a request: ``status`` and a message for ``detail``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in ``data``, brackets inside strings not counted."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub(b"", data)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def read_json(request: Request) -> Any:
    """The parsed body, or None when it is not JSON (the schema then says what is wrong); raises :class:`BadBody`."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise BadBody(415, f"Content-Encoding {encoding!r} is not supported: send the JSON body uncompressed")
    transfer = [t.strip().lower() for t in request.headers.get("Transfer-Encoding", "").split(",") if t.strip()]
    if any(t != "chunked" for t in transfer):
        raise BadBody(400, "only the chunked Transfer-Encoding is supported")
    try:
        data = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise BadBody(413, f"body must be at most {MAX_BODY} bytes") from None
    except ClientDisconnected:  # werkzeug: the stream ended before Content-Length bytes
        declared = request.content_length
        raise BadBody(400, f"the body ended before the {declared} bytes its Content-Length declared") from None
    declared = request.content_length
    if declared is not None and not transfer and len(data) < declared:
        raise BadBody(400, f"the body ended after {len(data)} of the {declared} bytes its Content-Length declared")
    if json_depth(data) > MAX_DEPTH:
        raise BadBody(400, f"JSON nested deeper than {MAX_DEPTH} levels; a request is one flat object")
    try:
        return json.loads(data)
    except RecursionError:  # the depth check makes this unreachable; kept so it can never become a 500
        raise BadBody(400, f"JSON nested deeper than {MAX_DEPTH} levels; a request is one flat object") from None
    except ValueError:  # not UTF-8, not JSON
        return None
