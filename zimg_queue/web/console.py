"""The live console at ``/``: queues, workers, GPU busy and batch size, and the latest images.

For people who would rather look than read. One page (``templates/console.html`` and
``static/console.js``, no build step, nothing from a CDN) that opens one server-sent
event stream (``/console/events``); every couple of seconds the stream sends a snapshot:

* queues and workers: what ``GET /v1/queues`` answers;
* GPU: each inference server's ``zimg_gpu_busy_ratio``, queue length and the mean batch
  size since the previous sample, read from its ``/metrics``, with a few minutes of history
  kept in Redis while someone watches (:class:`Sampler`);
* gallery: the latest finished jobs with prompt, size, seed, timings and the image URL
  (``/console/images/<id>``: the API's image, behind a Basic challenge a browser can answer).

Same auth as the API (the app-wide token check); a browser gets a Basic login prompt.
A stream ends after ``STREAM_S`` and the browser reconnects by itself, so a forgotten tab
never holds a server thread for good.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
import requests
from flask import Blueprint, Response, render_template, stream_with_context, url_for
from prometheus_client.parser import text_string_to_metric_families
from rq.job import Job
from rq.serializers import JSONSerializer

from workers.inference_pool import split_urls

from ..settings import PRIORITIES
from .extension import WebState, get_state

bp = Blueprint("zimg_console", __name__, template_folder="templates", static_folder="static",
               static_url_path="/console/static")  # fmt: skip

INTERVAL_S = 2.0
STREAM_S = 60.0
HISTORY = 150  # samples: 5 minutes at INTERVAL_S
GALLERY = 12
RESULT_CACHE = 256  # finished jobs never change: their gallery entries are read once
MAX_STREAMS = 4  # per process: open consoles never take more than these threads from the API
BUSY_RETRY_S = 5.0
STREAMS = threading.BoundedSemaphore(MAX_STREAMS)


def _scrape(url: str, token: str | None) -> tuple[dict[str, float], str | None] | None:
    """The few numbers the console needs from one inference server's ``/metrics`` (``None``: unreachable)."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        resp = requests.get(f"{url}/metrics", headers=headers, timeout=(0.5, 1.5))
        resp.raise_for_status()
    except requests.RequestException:
        return None
    wanted = {"zimg_gpu_busy_ratio", "zimg_inference_queue_length", "zimg_inference_batch_size_sum",
              "zimg_inference_batch_size_count"}  # fmt: skip
    values = {
        s.name: s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
        if s.name in wanted
    }
    return values, resp.headers.get("X-Zimg-Backend")  # every answer of the inference server names its backend


class Sampler:
    """GPU samples in Redis, shared by every web process and replica, taken by whichever stream is due.

    One sample per ``INTERVAL_S`` however many pages watch (a ``SET NX`` with a short expiry elects
    the sampler), kept in a capped list, so a stream that reconnects to another gunicorn process
    still draws the same history.
    """

    key = "zimg:console:gpu"
    lock = "zimg:console:sampling"

    def sample(self, state: WebState) -> list[dict[str, Any]]:
        conn = state.producer.connection
        if conn.set(self.lock, 1, nx=True, px=int(INTERVAL_S * 900)):
            raw = conn.lindex(self.key, 0)
            point = self._point(state, json.loads(raw) if raw else None)
            with conn.pipeline(transaction=False) as pipe:
                pipe.lpush(self.key, json.dumps(point))
                pipe.ltrim(self.key, 0, HISTORY - 1)
                pipe.execute()
        return [json.loads(p) for p in reversed(conn.lrange(self.key, 0, HISTORY - 1))]

    def _point(self, state: WebState, previous: dict[str, Any] | None) -> dict[str, Any]:
        token = state.settings.secret("inference_token")
        before = {s["url"]: s for s in (previous or {}).get("servers", []) if s.get("up")}
        servers: list[dict[str, Any]] = []
        for url in split_urls(state.settings.inference_url):
            scraped = _scrape(url, token)
            if scraped is None:
                servers.append({"url": url, "up": False})
                continue
            now, backend = scraped
            count, total = now.get("zimg_inference_batch_size_count", 0), now.get("zimg_inference_batch_size_sum", 0)
            prev = before.get(url)
            n = count - prev["count"] if prev else 0
            servers.append({
                "url": url, "up": True, "backend": backend, "busy": now.get("zimg_gpu_busy_ratio"),
                "queue": now.get("zimg_inference_queue_length"), "count": count, "sum": total,
                # the mean batch of the requests answered since the previous sample (none: no answer)
                "batch": round((total - prev["sum"]) / n, 2) if prev and n > 0 else None,
            })  # fmt: skip
        return {"t": time.time(), "servers": servers}


SAMPLER = Sampler()
_results: dict[str, dict[str, Any]] = {}


def _entry(job: Job) -> dict[str, Any] | None:
    cached = _results.get(job.id)
    if cached is not None:
        return cached
    result = job.return_value(refresh=True)
    if not isinstance(result, dict):
        return None
    request = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
    entry = {
        "id": job.id,
        "prompt": request.get("prompt"),
        "width": result.get("width"),
        "height": result.get("height"),
        "seed": result.get("seed"),
        "backend": result.get("backend"),
        "cache_hit": bool(result.get("cache_hit")),
        "timings": result.get("timings") or {},
        "ended_at": job.ended_at.isoformat() if job.ended_at else None,
        "image": url_for("zimg_console.image", job_id=job.id),
    }
    if len(_results) >= RESULT_CACHE:
        _results.pop(next(iter(_results)))
    _results[job.id] = entry
    return entry


def gallery(state: WebState, n: int = GALLERY) -> list[dict[str, Any]]:
    """The ``n`` latest finished jobs: the tail of each queue's finished registry (scored by expiry)."""
    ids: list[str] = []
    for priority in PRIORITIES:
        registry = state.producer.queue(priority).finished_job_registry
        ids += registry.get_job_ids(start=-n, end=-1, cleanup=False)
    jobs = Job.fetch_many(ids, connection=state.producer.connection, serializer=JSONSerializer)
    entries = [e for e in (_entry(job) for job in jobs if job is not None) if e is not None]
    entries.sort(key=lambda e: e["ended_at"] or "", reverse=True)
    return entries[:n]


def snapshot() -> dict[str, Any]:
    """Everything one console update shows."""
    from .api import queues

    state = get_state()
    body = queues().get_json()
    return {"queues": body["queues"], "workers": body["workers"], "gpu": SAMPLER.sample(state),
            "gallery": gallery(state)}  # fmt: skip


@bp.get("/")
def page() -> str:
    """The console page (HTML); it subscribes to ``/console/events``."""
    return render_template("console.html", window_s=HISTORY * INTERVAL_S)


@bp.errorhandler(redis.RedisError)
def _redis_down(exc: redis.RedisError) -> Response:
    from .api import _redis_down as api_answer  # the API's own 503

    return api_answer(exc)


@bp.get("/console/images/<job_id>")
def image(job_id: str) -> Response:
    """The gallery's images: the API's own image route, under this blueprint so that a browser
    without a token is asked for a Basic login (the API's routes challenge for Bearer, which a
    browser cannot answer, so an ``<img>`` there would stay broken)."""
    from .api import get_image

    return get_image(job_id)


def _event() -> str:
    try:
        get_state().probe.ping()  # short timeouts, no retries: a Redis that is down is told at once
        return f"event: snapshot\ndata: {json.dumps(snapshot(), separators=(',', ':'))}\n\n"
    except redis.RedisError as exc:  # the page says so and the stream goes on; Redis may come back
        return f"event: unavailable\ndata: {json.dumps({'error': f'Redis: {type(exc).__name__}'})}\n\n"


@bp.get("/console/events")
def events() -> Response:
    """Server-sent events: a ``snapshot`` event now and every ``INTERVAL_S``, for ``STREAM_S`` (then reconnect).

    A stream holds a server thread, which the API needs too: past ``MAX_STREAMS`` per process, a page
    gets one snapshot and is told to come back in ``BUSY_RETRY_S`` (it polls instead of streaming).
    """
    streaming = STREAMS.acquire(blocking=False)

    def stream() -> Iterator[str]:
        yield f"retry: {int((INTERVAL_S if streaming else BUSY_RETRY_S) * 1000)}\n\n"
        ends = time.monotonic() + (STREAM_S if streaming else 0)
        while True:
            yield _event()
            if time.monotonic() + INTERVAL_S > ends:
                return
            time.sleep(INTERVAL_S)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    response = Response(stream_with_context(stream()), mimetype="text/event-stream", headers=headers)
    if streaming:  # the WSGI server closes every answer, also when the client went away before the first byte
        response.call_on_close(STREAMS.release)
    return response
