"""Cross-site request forgery: a foreign page must not act through a user's browser.

A browser attaches some credentials on its own (a cached Basic login, cookies) to any
request a foreign page makes, and a page can send ``text/plain`` or form posts to any
origin without asking. So:

* a state-changing request (POST, PUT, PATCH, DELETE) whose ``Origin`` (or, without
  one, ``Referer``) names another site is refused with 403, unless it carries a bearer
  token: a foreign page cannot set ``Authorization`` without a CORS preflight this
  service never grants, so a bearer token proves a program sent it;
* ``POST /v1/jobs`` takes only ``application/json`` (415 otherwise), which a page can
  send cross-site only after such a preflight (see :func:`require_json`).

Programs (curl, requests, the CLI) send no ``Origin`` and are not affected.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import request

from .body import ApiError

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _site(scheme: str, netloc: str) -> tuple[str, int] | None:
    """``(host, port)`` with the scheme's default port filled in; ``None`` when unparsable."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        return (parts.hostname or "", parts.port or _DEFAULT_PORTS.get(scheme, 0))
    except ValueError:
        return None


def request_origin() -> str | None:
    """The site that made the request, as the browser said (``Origin``, else ``Referer``); ``None`` if unsaid."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    return origin.strip() if origin else None


def is_same_origin(origin: str) -> bool:
    """Whether ``origin`` is this service's own host and port (as the request addressed it)."""
    if origin == "null":  # sandboxed frames, data: URLs, some redirects: never ours
        return False
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    mine = _site(request.scheme, request.host)
    return mine is not None and _site(parts.scheme, parts.netloc) == mine


def check_origin() -> None:
    """``before_request``: 403 for a state-changing request from a foreign site without a bearer token."""
    if request.method not in UNSAFE:
        return
    if (request.headers.get("Authorization") or "").lower().startswith("bearer "):
        return
    origin = request_origin()
    if origin is not None and not is_same_origin(origin):
        raise ApiError(
            403,
            "forbidden_origin",
            "a state-changing request from another site is refused; send it from this site or with a bearer token",
        )


def require_json() -> None:
    """415 unless the body is declared ``application/json`` (or ``+json``)."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        got = mimetype or "none"
        raise ApiError.field("Content-Type", f"must be application/json (got {got})", http_status=415)
