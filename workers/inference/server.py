"""``zimg inference-server``: load a backend once, batch requests onto it, serve HTTP with waitress.

The routes live in :mod:`workers.inference.app`. This module starts things and stops them:

* it refuses to bind beyond loopback without ``ZIMG_INFERENCE_TOKEN`` unless ``ZIMG_ALLOW_PUBLIC_BIND``
  says that is intended;
* waitress answers an unsupported ``Transfer-Encoding`` (e.g. ``gzip``) with 501 before the app sees the
  request; :class:`ClientErrorParser` makes that the 400 it is (the client sent something this server
  does not take);
* when the device fails (:class:`~workers.inference.backends.base.DeviceFailure`), ``/healthz`` answers 503
  for ``FATAL_GRACE_S`` so probes see why, then the process exits with :data:`EXIT_DEVICE_FAILED` so its
  supervisor (``zimg up``, systemd, Kubernetes) starts a fresh one with a fresh CUDA context.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from typing import Any

import structlog

from zimg_queue.settings import Settings

from .app import create_app
from .backends.base import Backend
from .batcher import Batcher

__all__ = ["create_app", "serve", "check_bind", "EXIT_DEVICE_FAILED"]
log = structlog.get_logger(__name__)
EXIT_DEVICE_FAILED = 3
FATAL_GRACE_S = 2.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, allow_public_bind: bool) -> None:
    """Refuse (``SystemExit``) a non-loopback bind with no token, unless the operator said it is fine."""
    if is_loopback(host) or token or allow_public_bind:
        return
    raise SystemExit(
        f"refusing to serve the inference server on {host} without ZIMG_INFERENCE_TOKEN: anyone who can reach it "
        "could use the GPU. Set ZIMG_INFERENCE_TOKEN (the workers send it), or ZIMG_ALLOW_PUBLIC_BIND=true."
    )


def _client_error_parser():
    """waitress's request parser, answering an unsupported Transfer-Encoding with 400 instead of 501."""
    from waitress.parser import HTTPRequestParser  # type: ignore[import-untyped]
    from waitress.utilities import BadRequest, ServerNotImplemented  # type: ignore[import-untyped]

    class ClientErrorParser(HTTPRequestParser):
        def received(self, data: bytes) -> int:
            consumed: int = super().received(data)
            error: Any = getattr(self, "error", None)
            if isinstance(error, ServerNotImplemented):
                self.error = BadRequest(f"{error.body} Only chunked is accepted.")
            return consumed

    return ClientErrorParser


def make_server(app: Any, host: str, port: int, threads: int) -> Any:
    """A waitress server whose channels use :func:`_client_error_parser`."""
    from waitress import create_server  # type: ignore[import-untyped]
    from waitress.channel import HTTPChannel  # type: ignore[import-untyped]

    class Channel(HTTPChannel):
        parser_class = _client_error_parser()

    server = create_server(app, host=host, port=port, threads=threads, ident="zimg-inference", channel_timeout=60)
    server.channel_class = Channel
    return server


def serve(
    settings: Settings,
    *,
    backend_name: str = "sim",
    backend: Backend | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_batch: int = 8,
    max_wait_ms: float = 0.0,
    max_queue: int | None = None,
    max_batch_pixels: int = 0,
    threads: int | None = None,
    backend_options: dict[str, Any] | None = None,
) -> None:
    """Load the backend once (unless given), start the batcher, serve until interrupted."""
    token = settings.secret("inference_token")
    check_bind(host, token, settings.allow_public_bind)
    if backend is None:
        from .backends import load

        backend = load(backend_name, max_batch=max_batch, **(backend_options or {}))

    def die(exc: BaseException) -> None:
        log.error("exiting_after_device_failure", error=str(exc), exit_code=EXIT_DEVICE_FAILED)
        timer = threading.Timer(FATAL_GRACE_S, os._exit, (EXIT_DEVICE_FAILED,))
        timer.daemon = True
        timer.start()

    batcher = Batcher(
        backend,
        max_batch=max_batch,
        max_wait_s=max_wait_ms / 1000,
        max_queue=max_queue,
        max_batch_pixels=max_batch_pixels,
        on_fatal=die,
    )
    app = create_app(batcher, max_pixels=settings.max_pixels, token=token)
    queue = batcher.max_queue
    # Every waiting request holds a waitress thread: enough for the queue, the running batch and probes,
    # so that admission (and its 503) is ours, not a backlog inside waitress.
    server = make_server(app, host, port, threads or max(16, queue + max_batch + 8))
    log.info("inference_server_started", backend=backend.name, url=f"http://{host}:{port}", max_batch=max_batch,
             max_wait_ms=max_wait_ms, max_queue=queue, max_batch_pixels=max_batch_pixels)  # fmt: skip
    try:
        server.run()
    finally:
        batcher.close()
        backend.close()
