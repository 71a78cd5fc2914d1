"""The numbers an autoscaler needs, per queue: jobs waiting, workers ready, and an estimated wait.

``estimated_wait_s(q) = work ahead / workers ready``, where

* **work ahead** is, for ``q`` and every queue of higher priority (workers drain
  high, then normal, then low, so a ``low`` job waits for those too), the jobs
  waiting there times that queue's *recent mean job time*;
* the **recent mean job time** is the mean start-to-end time of the last
  :data:`RECENT` jobs RQ moved to the queue's finished registry (its own record:
  nothing extra to keep), else the all-time mean of ``zimg_job_duration_seconds``
  over all queues, else unknown;
* **workers ready** are live RQ workers listening on ``q`` and not suspended (busy
  ones included: they take the next job when the current one ends).

So with GPU hosts added the estimate falls at once (more workers), and it tracks the
real speed of the fleet (slower jobs on bigger images raise it). It is ``inf`` when
jobs wait and no worker is ready (scale from zero), ``None`` when jobs wait but no
job has finished yet to time. Everything is read from Redis in two pipelined round
trips, so any web process on any host gives the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: How many of the latest finished jobs of a queue make its recent mean job time.
RECENT = 50
_HISTOGRAM = "zimg:metrics:hist:job_duration:{}"  # written by zimg_queue.metrics.record_job


@dataclass(frozen=True)
class QueueCapacity:
    queue: str
    waiting: int
    workers_ready: int
    mean_job_s: float | None
    estimated_wait_s: float | None

    def as_json(self) -> dict[str, Any]:
        """JSON has no infinity: an endless wait (no worker ready) is ``null`` with ``no_workers: true``."""
        out = asdict(self)
        del out["queue"], out["waiting"]  # the API's `queued` already says it
        wait = self.estimated_wait_s
        out["estimated_wait_s"] = round(wait, 3) if wait is not None and math.isfinite(wait) else None
        out["mean_job_s"] = round(self.mean_job_s, 3) if self.mean_job_s is not None else None
        out["no_workers"] = self.workers_ready == 0
        return out


def estimate(connection: redis.Redis, queues: Sequence[str]) -> list[QueueCapacity]:
    """One :class:`QueueCapacity` per queue, ``queues`` in priority order (highest first)."""
    pipe = connection.pipeline(transaction=False)
    for q in queues:
        pipe.llen(f"rq:queue:{q}")
        pipe.smembers(f"rq:workers:{q}")
        pipe.zrevrange(f"rq:finished:{q}", 0, RECENT - 1)
        pipe.hmget(_HISTOGRAM.format(q), "sum", "count")
    raw = pipe.execute()
    depth, members, recent, hist = raw[0::4], raw[1::4], raw[2::4], raw[3::4]

    pipe = connection.pipeline(transaction=False)
    for names in members:
        for name in names:
            pipe.hget(_str(name), "state")  # RQ keeps worker keys (rq:worker:<name>) in the set
    for ids in recent:
        for job_id in ids:
            pipe.hmget(f"rq:job:{_str(job_id)}", "started_at", "ended_at")
    answers = iter(pipe.execute())
    ready = [sum(1 for _ in names if _is_ready(next(answers))) for names in members]
    means = [_mean([_duration(*next(answers)) for _ in ids]) for ids in recent]

    total_sum = sum(float(s or 0) for s, _ in hist)
    total_count = sum(int(c or 0) for _, c in hist)
    fallback = total_sum / total_count if total_count else None
    out, work_ahead = [], 0.0
    for i, q in enumerate(queues):
        mean = means[i] if means[i] is not None else fallback
        if depth[i]:
            work_ahead += depth[i] * mean if mean is not None else math.nan
        out.append(QueueCapacity(q, int(depth[i]), ready[i], mean, _wait(work_ahead, ready[i])))
    return out


def _wait(work: float, ready: int) -> float | None:
    if work == 0:
        return 0.0
    if ready == 0:
        return math.inf
    return None if math.isnan(work) else work / ready


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _is_ready(state: bytes | str | None) -> bool:
    return state is not None and _str(state) != "suspended"  # a missing hash: the worker's TTL ran out (dead)


def _duration(started: bytes | str | None, ended: bytes | str | None) -> float | None:
    if not started or not ended:
        return None
    try:
        seconds = (_parse(ended) - _parse(started)).total_seconds()
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _parse(value: bytes | str) -> datetime:
    return datetime.fromisoformat(_str(value).replace("Z", "+00:00"))


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


class CapacityCollector(Collector):
    """The estimate as Prometheus gauges, read at scrape time (``zimg_queue_depth`` already counts the waiting)."""

    def __init__(self, connection: redis.Redis, queues: Sequence[str]):
        self.connection, self.queues = connection, list(queues)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ready = GaugeMetricFamily(
            "zimg_workers_ready", "Read from Redis: live RQ workers taking jobs from the queue (idle or busy)",
            labels=["queue"],
        )  # fmt: skip
        mean = GaugeMetricFamily(
            "zimg_job_recent_mean_seconds",
            f"Read from Redis: mean start-to-end seconds of the queue's last {RECENT} finished jobs "
            "(all-time mean of zimg_job_duration_seconds when none; NaN when no job has finished yet)",
            labels=["queue"],
        )
        wait = GaugeMetricFamily(
            "zimg_queue_estimated_wait_seconds",
            "Estimated from Redis: jobs waiting in this and higher-priority queues x recent mean job time / "
            "workers ready; +Inf when jobs wait and no worker is ready, NaN before any job has finished",
            labels=["queue"],
        )
        for cap in estimate(self.connection, self.queues):
            ready.add_metric([cap.queue], cap.workers_ready)
            mean.add_metric([cap.queue], cap.mean_job_s if cap.mean_job_s is not None else math.nan)
            wait.add_metric([cap.queue], cap.estimated_wait_s if cap.estimated_wait_s is not None else math.nan)
        yield ready
        yield mean
        yield wait
