"""``GET /v1/jobs/<id>/events``: a job's stage and step changes as server-sent events, until it is final.

A browser follows a job with ``new EventSource(url)`` instead of polling. Each change of the
job's status or progress (stage, percent, step) is one event::

    id: 3f2a9c1e0b7d
    event: status
    data: {"id": ..., "status": "started", "progress": {"stage": "inference", "step": 3, ...}, ...}

``data`` is the same JSON as ``GET /v1/jobs/<id>``. Once the job is final the last ``status``
event is followed by ``event: end`` and the stream closes; the page closes its ``EventSource``.

Threads are the limit under gunicorn ``gthread``, so a stream never holds one for long:

* it ends after :data:`MAX_STREAM_S` seconds even if the job is not final; ``EventSource``
  reconnects by itself after the ``retry:`` delay, sending ``Last-Event-ID``, and the state
  it already has is not sent again;
* at most :data:`MAX_STREAMS` streams run at once per process (under ``zimg web``, at most half
  its threads); a request past that gets the current state and ``retry:`` at once, so that
  client polls instead of waiting;
* a reconnect for a job already final with the final state's id gets ``204 No Content``,
  which tells ``EventSource`` to stop reconnecting.

Auth is the same as every other route (the blueprint's ``before_request``).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, request, stream_with_context

from ..status import FINAL_NAMES
from .body import ApiError

#: Longest a stream stays open before the client reconnects (gunicorn's worker timeout is 120 s).
MAX_STREAM_S = 25.0
#: Streams at once per web process: a few of the threads, never all (2 x 16 by default).
MAX_STREAMS = 8
POLL_S = 0.3
KEEPALIVE_S = 10.0
RETRY_MS = 1000
BUSY_RETRY_MS = 2000
_slots = threading.BoundedSemaphore(MAX_STREAMS)


def limit_streams(threads: int) -> None:
    """Let streams take at most half of a process's ``threads`` (and never more than ``MAX_STREAMS``).

    Called by ``zimg web`` before serving, which knows the thread count; an app mounted elsewhere keeps
    ``MAX_STREAMS``.
    """
    global _slots
    _slots = threading.BoundedSemaphore(max(1, min(MAX_STREAMS, threads // 2)))


def event_id(status: dict[str, Any]) -> str:
    """A short id for the part of a status an event announces (status and progress)."""
    key = json.dumps([status.get("status"), status.get("progress")], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def format_event(status: dict[str, Any], event: str = "status") -> str:
    data = json.dumps(status, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"id: {event_id(status)}\nevent: {event}\ndata: {data}\n\n"


def _response(body: Iterator[str] | str, status: int = 200) -> Response:
    response = Response(body, status=status, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass events on as they come
    return response


def stream(read: Callable[[], dict[str, Any]], *, max_s: float | None = None) -> Response:
    """The events response for one job; ``read()`` returns its current status (raising 404 when unknown)."""
    first = read()  # 404s before any stream starts
    last_seen = request.headers.get("Last-Event-ID")
    final = first["status"] in FINAL_NAMES
    if final and last_seen == event_id(first):
        return Response(status=204)  # the client has the final state: EventSource stops reconnecting
    limit = MAX_STREAM_S if max_s is None else max_s

    def events() -> Iterator[str]:
        # The slot is taken inside the generator, so a response that is never iterated holds none.
        if not _slots.acquire(blocking=False):  # busy: the state now, and come back later (polling, in effect)
            yield f"retry: {BUSY_RETRY_MS}\n\n" + format_event(first)
            return
        try:
            yield f"retry: {RETRY_MS}\n\n"
            status, shown, deadline = first, last_seen, time.monotonic() + limit
            quiet_since = time.monotonic()
            while True:
                current = event_id(status)
                if current != shown:
                    yield format_event(status)
                    shown, quiet_since = current, time.monotonic()
                if status["status"] in FINAL_NAMES:
                    yield "event: end\ndata: {}\n\n"
                    return
                if time.monotonic() >= deadline:
                    return  # the client reconnects with Last-Event-ID
                if time.monotonic() - quiet_since >= KEEPALIVE_S:
                    yield ": keep-alive\n\n"  # a comment: proxies see traffic, clients ignore it
                    quiet_since = time.monotonic()
                time.sleep(POLL_S)
                try:
                    status = read()
                except ApiError:  # deleted or expired meanwhile: nothing more will happen
                    yield "event: end\ndata: {}\n\n"
                    return
        finally:
            _slots.release()

    return _response(stream_with_context(events()))
