"""The standalone service behind ``zimg web``: the API at ``/`` and rq-dashboard at ``/rq/``.

Built as an ordinary Flask app so more blueprints (batches, metrics) can be added with
``app.register_blueprint`` in :func:`create_app`, or by a caller on the returned app.
An app-wide token check covers every endpoint but ``/healthz``, so a blueprint added
later is protected without doing anything.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from .auth import guard
from .body import ApiError
from .campaigns import bp as campaigns_bp
from .console import bp as console_bp
from .extension import ZimgQueue, get_state
from .origin import check_origin
from .transport import check_request_body

log = logging.getLogger(__name__)


def _http_error(exc: HTTPException) -> Response:
    code = (exc.name or "error").lower().replace(" ", "_")
    keep = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after", "www-authenticate")}
    return ApiError(exc.code or 500, code, exc.description or exc.name, headers=keep).response()


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return ApiError(500, "internal_error", "unexpected server error; see the server log").response()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The standalone app. ``config`` (``ZIMG_*`` keys) overrides the environment."""
    app = Flask("zimg_queue.web")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config.update(config or {})
    ZimgQueue(app, url_prefix="", dashboard_prefix=app.config.get("ZIMG_DASHBOARD_PREFIX", "/rq"))
    app.before_request(guard(lambda: get_state(app).settings.secret("api_token")))
    app.before_request(check_origin)  # every blueprint, the dashboard's included: no cross-site state changes
    app.before_request(check_request_body)  # codings, truncated uploads, nesting: before any route reads a body
    app.register_blueprint(campaigns_bp)  # GET /v1/campaigns/<name>, GET /metrics
    app.register_blueprint(console_bp)  # GET / (the live console), GET /console/events
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ApiError, ApiError.response)  # raised by app-wide before_request checks
    app.register_error_handler(Exception, _unexpected)
    proxies = int(get_state(app).settings.proxy_count or 0)
    if proxies:  # behind N reverse proxies: the rate limit keys on the client's address, not the proxy's
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)  # type: ignore[method-assign]
    return app
