"""``zimg web``: the standalone app under a production WSGI server.

Default: gunicorn with ``gthread`` workers (one process per core, several threads each)
where gunicorn is installed, else waitress (pure Python, one process, a thread pool).
Threads matter because ``GET /v1/jobs/<id>?wait=N`` holds a thread for up to 60 s;
processes matter because Flask view code holds the GIL. Binds to loopback unless told, and
refuses to bind beyond it without ``ZIMG_API_TOKEN`` (see :mod:`zimg_queue.bind`).

Both servers give a request to a thread only once it has arrived whole, so slow or
stalled uploads cannot starve ``/healthz``: waitress does so by design, gunicorn through
:class:`zimg_queue.web.buffering.BufferingThreadWorker`. Both answer an unsupported
``Transfer-Encoding`` with 400 (stock waitress says 501).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any

from flask import Flask

from ..bind import PublicBindRefused, check_bind
from ..logs import gunicorn_logger_class
from ..settings import Settings

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_THREADS = 16


def default_server() -> str:
    return "gunicorn" if importlib.util.find_spec("gunicorn") is not None else "waitress"


def default_processes() -> int:
    return max(1, os.cpu_count() or 1)


def _gunicorn(host: str, port: int, processes: int, threads: int, settings: Settings) -> None:
    from gunicorn.app.base import BaseApplication

    from .buffering import BufferingThreadWorker

    BufferingThreadWorker.body_timeout = settings.web_body_timeout  # inherited by the forked workers
    BufferingThreadWorker.max_body = settings.max_body_bytes
    BufferingThreadWorker.max_conn_requests = settings.web_keepalive_requests

    class Application(BaseApplication):
        """gunicorn without a config file; each worker process builds its own app (no shared sockets)."""

        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": f"{host}:{port}",
                "workers": processes,
                "worker_class": BufferingThreadWorker,  # gthread, buffering each request before a thread
                "threads": threads,
                "timeout": 120,  # > the 60 s ?wait cap
                "graceful_timeout": 10,
                # On (5 s), each connection closed after ZIMG_WEB_KEEPALIVE_REQUESTS (20) requests so that
                # persistent clients spread over the processes (BufferingThreadWorker.handle_request).
                # Measured (python -m benchmarks.keepalive, 8 clients, POST /v1/jobs, 9 runs each): 1,315-1,405
                # req/s capped at 20, 1,093-1,427 at 100, 893-1,528 uncapped, 1,136-1,216 off.
                "keepalive": settings.web_keepalive,
                # The access log is the app's own ``http_request`` line (zimg_queue.web.telemetry): chosen
                # fields, never a header, so no token; gunicorn's own lines go through the same structlog setup.
                "accesslog": None,
                "errorlog": "-",
                "loglevel": Settings().log_level,
                "logger_class": gunicorn_logger_class(),
                "proc_name": "zimg-web",
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            from .app import create_app
            from .events import limit_streams

            limit_streams(threads)  # server-sent event streams never take more than half the threads
            return create_app()

    Application().run()


def _waitress(host: str, port: int, threads: int, settings: Settings) -> None:
    from waitress import create_server
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser, ParsingError, TransferEncodingNotImplemented

    from .app import create_app
    from .events import limit_streams

    limit_streams(threads)

    class Parser(HTTPRequestParser):
        """An unsupported ``Transfer-Encoding`` is the client's mistake: 400, not waitress's 501."""

        def parse_header(self, header_plus: bytes) -> None:
            try:
                super().parse_header(header_plus)
            except TransferEncodingNotImplemented as exc:
                raise ParsingError(f"{exc.args[0]} Only 'chunked' is.") from None

    class Channel(HTTPChannel):
        parser_class = Parser

    server = create_server(
        create_app(),
        host=host,
        port=port,
        threads=threads,
        ident="zimg-web",
        channel_timeout=max(1, int(settings.web_body_timeout)),  # an idle, half-sent request is dropped
        # waitress buffers a body before the app sees it: cap that (the app answers 413 above max_body_bytes)
        max_request_body_size=max(1 << 20, 16 * settings.max_body_bytes),
    )
    server.channel_class = Channel  # type: ignore[union-attr]
    server.run()


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    server: str | None = None,
    processes: int | None = None,
    threads: int = DEFAULT_THREADS,
) -> None:
    """Run until SIGTERM/SIGINT. ``processes`` only applies to gunicorn.

    Beyond loopback without ``ZIMG_API_TOKEN`` (and without ``ZIMG_ALLOW_PUBLIC_BIND``) it prints one
    line and exits with status 2 instead of starting.
    """
    settings = Settings()
    try:
        check_bind(host, token=settings.secret("api_token"), token_setting="ZIMG_API_TOKEN",
                   allow_public=settings.allow_public_bind, server="zimg web")  # fmt: skip
    except PublicBindRefused as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    server = server or default_server()
    processes = processes or default_processes()
    log.info("zimg web on http://%s:%d (%s, %d process(es) x %d threads)", host, port, server, processes, threads)
    if server == "gunicorn":
        _gunicorn(host, port, processes, threads, settings)
    elif server == "waitress":
        _waitress(host, port, threads, settings)
    else:
        raise ValueError(f"unknown server {server!r}: gunicorn or waitress")
