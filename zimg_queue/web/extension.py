"""``ZimgQueue``: the Flask extension. One call gives an app the whole API.

::

    from flask import Flask
    from zimg_queue.web import ZimgQueue

    app = Flask(__name__)
    app.config["ZIMG_REDIS_URL"] = "redis://127.0.0.1:6379/0"
    zimg = ZimgQueue(app, url_prefix="/images")      # or zimg = ZimgQueue(); zimg.init_app(app)

    @app.post("/make")
    def make():
        return {"id": zimg.producer.enqueue("a cat", width=512, height=512)}

Settings come from ``app.config`` (``ZIMG_*`` keys), falling back to the environment,
through :meth:`Settings.from_mapping` — the same settings object the producer, the
workers and the CLI use, so there is one code path from a view to a worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis
from flask import Flask, current_app, has_app_context

from ..queue import Producer
from ..settings import Settings
from .auth import protect_blueprint
from .limits import Limits, RateLimiter

EXTENSION_KEY = "zimg_queue"


@dataclass
class WebState:
    """Per-app objects built once at start-up, never per request."""

    settings: Settings
    producer: Producer
    limits: Limits
    limiter: RateLimiter
    #: A client with short timeouts and no retries: a health probe must answer fast when Redis is down.
    probe: redis.Redis

    @classmethod
    def build(cls, config: dict, producer: Producer | None = None) -> WebState:
        source = "app.config" if config.get("ZIMG_REDIS_URL") else None
        settings = Settings.from_mapping(config).with_default_redis(source=source)
        producer = producer or Producer(settings=settings)
        settings = producer.settings
        limits = Limits.from_settings(settings)
        limiter = RateLimiter(producer.connection, limits.rate, limits.window, prefix=settings.queue_prefix)
        probe = redis.Redis.from_url(settings.redis_url or "", socket_timeout=1, socket_connect_timeout=1)
        return cls(settings, producer, limits, limiter, probe)

    @property
    def images_path(self) -> Path:
        return self.settings.images_path


def get_state(app: Flask | None = None) -> WebState:
    """The app's :class:`WebState`, built from ``app.config`` on first use."""
    app = app or current_app
    state = app.extensions.get(EXTENSION_KEY)
    if state is None:
        state = app.extensions[EXTENSION_KEY] = WebState.build(app.config)
    return state


def mount_dashboard(app: Flask, url_prefix: str = "/rq") -> None:
    """Mount rq-dashboard 0.9 at ``url_prefix``, reading our JSON jobs, behind the API token.

    rq-dashboard has no auth of its own when used as a blueprint, so the token check is
    put first among the blueprint's ``before_request`` functions. Its actions are replaced
    by :mod:`zimg_queue.web.dashboard`'s (POST only, 4xx for missing or foreign jobs, same-site only).
    """
    import rq_dashboard
    import rq_dashboard.web
    from rq.serializers import JSONSerializer

    state = get_state(app)
    rq_dashboard.web.config.serializer = JSONSerializer  # our jobs are JSON, never pickle
    app.config.setdefault("RQ_DASHBOARD_REDIS_URL", state.settings.redis_url)
    app.config.setdefault("RQ_DASHBOARD_POLL_INTERVAL", 2500)
    app.config.setdefault("RQ_DASHBOARD_SHOW_FULL_ARGS", True)  # job detail shows the request (small by design)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=url_prefix.rstrip("/") or "/")
    rq_dashboard.web.setup_rq_connection(app)
    protect_blueprint(app, rq_dashboard.blueprint.name, lambda: get_state(app).settings.secret("api_token"))
    from .dashboard import harden

    harden(app)


class ZimgQueue:
    """The extension: registers the API blueprint (and optionally rq-dashboard) on an app.

    ``url_prefix`` defaults to ``app.config["ZIMG_URL_PREFIX"]`` (else ``""``), so the routes
    are ``<prefix>/v1/jobs`` and so on. ``producer`` lets a test or an app share its own.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        url_prefix: str | None = None,
        dashboard_prefix: str | None = None,
        producer: Producer | None = None,
    ):
        self.url_prefix = url_prefix
        self.dashboard_prefix = dashboard_prefix
        self._producer = producer
        self._app: Flask | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, url_prefix: str | None = None, dashboard_prefix: str | None = None) -> None:
        from . import telemetry
        from .api import bp

        app.extensions[EXTENSION_KEY] = WebState.build(app.config, self._producer)
        telemetry.install(app)  # request ids, access log lines, HTTP metrics (app-wide)
        prefix = url_prefix if url_prefix is not None else self.url_prefix
        if prefix is None:
            prefix = app.config.get("ZIMG_URL_PREFIX", "")
        app.register_blueprint(bp, url_prefix=prefix.rstrip("/") or None)
        dashboard = dashboard_prefix if dashboard_prefix is not None else self.dashboard_prefix
        if dashboard:
            mount_dashboard(app, dashboard)
        self._app = app

    @property
    def state(self) -> WebState:
        return get_state(current_app if has_app_context() or self._app is None else self._app)

    @property
    def producer(self) -> Producer:
        """The app's :class:`Producer`: enqueue, status, wait and cancel from your own views."""
        return self.state.producer

    @property
    def settings(self) -> Settings:
        return self.state.settings
