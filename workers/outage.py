"""Waiting out an inference outage: one circuit breaker in Redis, shared by every worker.

Why a shared breaker and not per-job retries: RQ's ``Retry`` spends a job's attempts
on an outage (1 + 4 + 16 s by default), so a server that is down for a deploy or a
model load (often longer than 21 s) used to fail the whole backlog. An outage is
not the job's fault, so it must not cost the job anything:

* A job whose call finds the server unreachable or answering 503
  (:class:`workers.errors.InferenceDown`) *trips* the breaker: one Redis hash per inference
  URL, ``zimg:inference:outage:<url>``, holding when the outage began (``down_since``, kept by
  the first worker to notice) and when the server may next be tried (``probe_at``).
  The job goes back to the *front* of its queue untouched (no attempt recorded, no
  retry spent), its progress saying it waits for the inference server.
* Before taking the next job, every worker looks at the breaker (:meth:`Breaker.wait_turn`).
  While it is open, workers take nothing: the backlog stays queued. When ``probe_at``
  comes, exactly one worker (``SET NX``) takes one job as the *trial* request. A
  failed trial trips the breaker again with a longer pause (a quarter of the outage
  so far, 0.5-5 s, jittered, or the server's ``Retry-After`` if longer); a successful
  one closes it and everyone resumes.
* So the server sees one request every few seconds during an outage instead of every
  job's retries, and when it is back the workers resume with one job each: at most
  as many requests in flight as there are workers, which is the concurrency it
  serves anyway. No thundering herd, and no job waits in ``started`` holding a
  worker (or running into its own timeout).
* Past ``ZIMG_OUTAGE_BUDGET`` seconds of outage workers stop waiting: each job tries
  the server once and, if it is still down, fails with
  :class:`workers.errors.InferenceOutage`, naming how long the server was down.

The hash expires a minute after the last trip, so a breaker left open by workers
that all died does not outlive them: the next worker simply tries the server.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis
import structlog
from rq import Retry

log = structlog.get_logger(__name__)

KEY_PREFIX = "zimg:inference:outage"


def outage_key(inference_url: str) -> str:
    """The breaker's hash for the workers of one inference server (or one comma list of them)."""
    return f"{KEY_PREFIX}:{inference_url}"


#: The breaker forgets an outage nobody has tried the server for during this long.
FORGET_S = 60
MIN_PAUSE_S = 0.5
MAX_PAUSE_S = 5.0
#: How often a waiting worker looks at the breaker (it is one HGETALL).
POLL_S = 0.25


class AwaitInference(Retry):
    """What a job returns to go back to the front of its queue without spending a retry (RQ's own
    "a job may return a ``Retry``"). :class:`workers.worker.ZimgWorker` re-queues it at the front;
    any other RQ worker re-queues it at the back, which is still correct."""

    def __init__(self) -> None:
        super().__init__(max=1_000_000, interval=0)


@dataclass(frozen=True)
class Outage:
    """An open breaker, as read from Redis."""

    down_since: float
    probe_at: float
    reason: str

    @property
    def down_for(self) -> float:
        return max(0.0, time.time() - self.down_since)

    @property
    def since_iso(self) -> str:
        return datetime.fromtimestamp(self.down_since, timezone.utc).isoformat().replace("+00:00", "Z")


def pause_for(down_for: float, retry_after: float | None = None) -> float:
    """Seconds until the next trial: grows with the outage (a quarter of it, 0.5-5 s), jittered +-20 %."""
    pause = min(MAX_PAUSE_S, max(MIN_PAUSE_S, down_for / 4)) * random.uniform(0.8, 1.2)
    return max(pause, retry_after or 0.0)


class Breaker:
    """The shared breaker (see the module docstring). Cheap to build; one per worker process."""

    def __init__(self, connection: redis.Redis, budget: float, inference_url: str = ""):
        self.connection, self.budget = connection, budget
        self.key = outage_key(inference_url)
        self.trial_key = f"{self.key}:trial"
        #: This process saw the breaker open and has not seen a success since: a success must close it.
        self.maybe_open = False

    def state(self) -> Outage | None:
        raw = {_text(k): _text(v) for k, v in self.connection.hgetall(self.key).items()}  # type: ignore[union-attr]
        if "down_since" not in raw:
            return None
        return Outage(float(raw["down_since"]), float(raw.get("probe_at") or 0), raw.get("reason", ""))

    def trip(self, exc: BaseException) -> Outage:
        """Record a failed call; returns the outage (its start is the first trip's)."""
        now = time.time()
        retry_after = getattr(exc, "retry_after", None)
        with self.connection.pipeline() as pipe:
            pipe.hsetnx(self.key, "down_since", now)
            pipe.hset(self.key, "reason", str(exc)[:300])
            pipe.hget(self.key, "down_since")
            _, _, since = pipe.execute()
        down_since = float(since or now)
        probe_at = now + pause_for(now - down_since, retry_after)
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, "probe_at", probe_at)
            pipe.expire(self.key, FORGET_S)
            pipe.delete(self.trial_key)  # this trial is over
            pipe.execute()
        if not self.maybe_open:
            log.warning("inference_down", down_since=down_since, reason=str(exc)[:300])
        self.maybe_open = True
        return Outage(down_since, probe_at, str(exc)[:300])

    def close(self) -> None:
        """A call succeeded: the outage (if any) is over."""
        if self.maybe_open:
            self.connection.delete(self.key, self.trial_key)
            self.maybe_open = False
            log.info("inference_back")

    def wait_turn(self, *, heartbeat: Callable[[], Any] | None = None, heartbeat_every: float = 10.0) -> str:
        """Block while the breaker is open; returns ``"closed"``, ``"trial"`` (this worker tries the server
        next) or ``"over_budget"`` (stop waiting: the next job tries once and fails if still down)."""
        last_beat = time.monotonic()
        while True:
            outage = self.state()
            if outage is None:
                return "closed"
            self.maybe_open = True
            if self.budget <= 0 or outage.down_for > self.budget:
                return "over_budget"
            now = time.time()
            if now >= outage.probe_at:
                trial_ms = int(max(MAX_PAUSE_S * 2, 1.0) * 1000)  # a trial that hangs frees the slot again
                if self.connection.set(self.trial_key, "1", nx=True, px=trial_ms):
                    return "trial"
            if heartbeat is not None and time.monotonic() - last_beat >= heartbeat_every:
                heartbeat()
                last_beat = time.monotonic()
            wait = max(0.0, outage.probe_at - now) if now < outage.probe_at else POLL_S
            time.sleep(min(POLL_S, wait) * random.uniform(0.8, 1.2) + 0.01)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
