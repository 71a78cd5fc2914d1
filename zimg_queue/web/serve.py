"""``zimg web``: the standalone app under a production WSGI server.

Default: gunicorn with ``gthread`` workers (one process per core, several threads each)
where gunicorn is installed, else waitress (pure Python, one process, a thread pool).
Threads matter because ``GET /v1/jobs/<id>?wait=N`` holds a thread for up to 60 s;
processes matter because Flask view code holds the GIL. Binds to loopback unless told.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from flask import Flask

from ..settings import Settings

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_THREADS = 16


def default_server() -> str:
    return "gunicorn" if importlib.util.find_spec("gunicorn") is not None else "waitress"


def default_processes() -> int:
    return max(1, os.cpu_count() or 1)


def _gunicorn(host: str, port: int, processes: int, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    class Application(BaseApplication):
        """gunicorn without a config file; each worker process builds its own app (no shared sockets)."""

        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": f"{host}:{port}",
                "workers": processes,
                "worker_class": "gthread",
                "threads": threads,
                "timeout": 120,  # > the 60 s ?wait cap
                "graceful_timeout": 10,
                # Off by default: with keep-alive, a few busy client connections can all land on one
                # worker process (measured: ~600 req/s instead of ~1,200 with 2 processes).
                "keepalive": Settings().web_keepalive,
                "accesslog": None,  # the Authorization header is never logged: no access log by default
                "errorlog": "-",
                "loglevel": "info",
                "proc_name": "zimg-web",
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            from .app import create_app

            return create_app()

    Application().run()


def _waitress(host: str, port: int, threads: int) -> None:
    from waitress import serve

    from .app import create_app

    serve(create_app(), host=host, port=port, threads=threads, ident="zimg-web", channel_timeout=120)


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    server: str | None = None,
    processes: int | None = None,
    threads: int = DEFAULT_THREADS,
) -> None:
    """Run until SIGTERM/SIGINT. ``processes`` only applies to gunicorn."""
    server = server or default_server()
    processes = processes or default_processes()
    log.info("zimg web on http://%s:%d (%s, %d process(es) x %d threads)", host, port, server, processes, threads)
    if server == "gunicorn":
        _gunicorn(host, port, processes, threads)
    elif server == "waitress":
        _waitress(host, port, threads)
    else:
        raise ValueError(f"unknown server {server!r}: gunicorn or waitress")
