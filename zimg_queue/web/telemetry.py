"""Request ids, access log lines and HTTP metrics for the web API: one ``install(app)``.

* **Request id.** A request's ``X-Request-Id`` is kept when it looks like an id (a client or
  proxy that already has one), else a new one is made; the answer echoes it, every log line
  of the request carries it (structlog context), and ``POST /v1/jobs`` stores it in the
  job's meta, so the worker can send it on to the inference server: one id across every process.
* **Access log.** One ``http_request`` event per answer: method, route, path, status,
  duration, client address (a successful ``/healthz`` or ``/metrics``, which probes call every
  few seconds, at debug level). Built from chosen fields, never from headers, so neither the
  ``Authorization`` header nor a token can reach the log (the query string is left out too).
* **Metrics.** :class:`zimg_queue.metrics.HttpRecorder` per answer (buffered, added to Redis
  every second), labelled by the URL rule (``/v1/jobs/<job_id>``), never the raw path, so the
  number of series stays bounded.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from flask import Flask, Response, current_app, g, request

from .. import logs
from ..metrics import HttpRecorder
from .extension import get_state

HEADER = "X-Request-Id"
#: An incoming id is kept only if it is short and plain: it goes into logs, headers and Redis.
VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UNMATCHED = "unmatched"  # the route label of a request no URL rule matched (a 404)
INSTALLED = "zimg_telemetry"
RECORDER = "zimg_http_metrics"
METRICS_ENDPOINT = "zimg_campaigns.metrics"  # GET /metrics
PROBE_ENDPOINTS = {METRICS_ENDPOINT, "zimg_queue.healthz"}
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

log = structlog.get_logger("zimg_queue.web.access")


def request_id() -> str | None:
    """The current request's id (``None`` outside a request)."""
    return g.get("request_id")


def job_meta() -> dict[str, Any]:
    """What a view adds to a job's meta: ``{"request_id": ...}`` (the worker sends it on)."""
    rid = request_id()
    return {"request_id": rid} if rid else {}


def _flush_before_scrape() -> None:
    """A scrape of ``/metrics`` sees every request this process answered so far (others: within a second)."""
    if request.endpoint == METRICS_ENDPOINT:
        current_app.extensions[RECORDER].flush()


def _start() -> None:
    g.telemetry_started = time.perf_counter()
    incoming = request.headers.get(HEADER, "")
    g.request_id = incoming if VALID_ID.fullmatch(incoming) else uuid.uuid4().hex
    logs.bind(request_id=g.request_id)


def _route() -> str:
    return request.url_rule.rule if request.url_rule is not None else UNMATCHED


def _finish(response: Response) -> Response:
    rid = g.get("request_id")
    if rid:
        response.headers[HEADER] = rid
    started = g.get("telemetry_started")
    seconds = time.perf_counter() - started if started is not None else 0.0
    route = _route()
    method = request.method if request.method in METHODS else "other"  # any token is a method: keep labels bounded
    current_app.extensions[RECORDER].observe(method, route, response.status_code, seconds)
    # A load balancer's probe and Prometheus' scrape come every few seconds: their successes at debug level.
    quiet = request.endpoint in PROBE_ENDPOINTS and response.status_code < 400
    (log.debug if quiet else log.info)(
        "http_request", method=request.method, route=route, path=request.path, status=response.status_code,
        duration_ms=round(seconds * 1000, 2), remote_addr=request.remote_addr, bytes=response.content_length,
    )  # fmt: skip
    return response


def _teardown(_exc: BaseException | None) -> None:
    logs.unbind("request_id")


def install(app: Flask) -> None:
    """Install the hooks once per app; the id is made before any other ``before_request`` runs (auth too)."""
    if app.extensions.get(INSTALLED):
        return
    app.extensions[INSTALLED] = True
    app.extensions[RECORDER] = HttpRecorder(lambda: get_state(app).probe)
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.before_request(_flush_before_scrape)
    app.after_request(_finish)
    app.teardown_request(_teardown)
