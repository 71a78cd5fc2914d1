"""Prometheus metrics, with ``prometheus-client``.

RQ workers are separate processes, often on separate GPU hosts, and a worker can be
killed at any moment. So the numbers live where all of them already meet: Redis.

* Workers (through the jobs' success/failure callbacks) add to a few Redis hashes:
  finished/failed/images counters per queue and bucketed job-duration and
  inference-time histograms. Producers add to the enqueued counter in the same
  pipeline that enqueues.
* The web API adds its answered requests to one hash (:class:`HttpRecorder`, buffered per
  process): gunicorn runs several processes, and a scrape reaches only one of them.
* :class:`RedisCollector` reads those hashes, plus queue depth, registry sizes and the
  worker count straight from RQ's own keys, *at scrape time* (one pipelined round trip).

Prometheus' multiprocess mode was the alternative; it needs a shared folder on one
host and cleanup of dead pids, neither of which holds for workers spread over hosts.

The inference server is one process, so its metrics are ordinary in-process ones
(``workers.inference.metrics``), served at its own ``GET /metrics``.

Every HELP text here starts with who measured the number ("Measured by the worker",
"Measured by the web API", "Read from Redis"; the inference server's say "measured by the
inference server"): the same call looks different from each side.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

PREFIX = "zimg:metrics"
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: Web API answers: most take milliseconds, ``?wait=N`` holds one up to 60 s.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REGISTRIES = {"started": "rq:wip:{}", "scheduled": "rq:scheduled:{}", "deferred": "rq:deferred:{}",
              "failed": "rq:failed:{}", "finished": "rq:finished:{}"}  # fmt: skip
COUNTERS = ("enqueued", "finished", "failed", "images")
#: Per-job histograms the *worker* records (Redis key part -> metric name, HELP).
HISTOGRAMS = {
    "job_duration": ("zimg_job_duration_seconds",
                     "Measured by the worker: seconds from a job's start on a worker to its end, per ended job"),
    "inference": ("zimg_job_inference_seconds",
                  "Measured by the worker: seconds of its POST /v1/generate round trip(s) for a job (network, the "
                  "inference server's queue and generation); the server's own view is zimg_inference_request_seconds"),
    "queued": ("zimg_job_queued_seconds",
               "Measured by the worker: seconds a job waited in its RQ queue before a worker started it"),
}  # fmt: skip
HTTP_METRIC = "zimg_http_request_duration_seconds"
HTTP_HELP = ("Measured by the web API: seconds to answer a request, by method, route (the URL rule, not the path) "
             "and status; _count is the number of requests")  # fmt: skip


def _bucket(value: float, buckets: Sequence[float] = DURATION_BUCKETS) -> str:
    for bound in buckets:
        if value <= bound:
            return str(bound)
    return "+Inf"


def _usable(value: float | None) -> bool:
    return value is not None and value >= 0 and not math.isnan(value)


def record_enqueued(conn: Any, queue: str, n: int = 1) -> None:
    """Count ``n`` enqueued jobs (``conn`` may be a pipeline)."""
    conn.hincrby(f"{PREFIX}:enqueued", queue, n)


def record_job(
    conn: Any, queue: str, *, ok: bool, duration_s: float | None, inference_s: float | None = None,
    images: int = 0, queued_s: float | None = None,
) -> None:  # fmt: skip
    """One ended job, recorded by its worker: a counter and up to three histogram observations.

    ``conn`` is a connection (one round trip) or a pipeline the caller executes (the worker's closing
    transaction, :mod:`workers.result_writes`).
    """
    if isinstance(conn, redis.client.Pipeline):
        _job_observations(conn, queue, ok, duration_s, inference_s, images, queued_s)
        return
    with conn.pipeline(transaction=False) as pipe:
        _job_observations(pipe, queue, ok, duration_s, inference_s, images, queued_s)
        pipe.execute()


def _job_observations(
    pipe: Any, queue: str, ok: bool, duration_s: float | None, inference_s: float | None, images: int,
    queued_s: float | None,
) -> None:  # fmt: skip
    pipe.hincrby(f"{PREFIX}:{'finished' if ok else 'failed'}", queue, 1)
    if images:
        pipe.hincrby(f"{PREFIX}:images", queue, images)
    for name, value in (("job_duration", duration_s), ("inference", inference_s), ("queued", queued_s)):
        if not _usable(value):
            continue
        assert value is not None
        key = f"{PREFIX}:hist:{name}:{queue}"
        pipe.hincrby(key, _bucket(value), 1)
        pipe.hincrbyfloat(key, "sum", value)
        pipe.hincrby(key, "count", 1)


#: Seconds between two flushes of the web API's request observations to Redis.
HTTP_FLUSH_S = 1.0


class HttpRecorder:
    """The web API's request observations, buffered per process and added to Redis every ``HTTP_FLUSH_S``.

    Writing each request to Redis cost a round trip per request (measured: about 0.2 ms, as much as
    answering a small request); a per-process buffer costs a dict update, and every gunicorn process
    still adds to the same hash, so a scrape of any process sees all of them, at most a second late.
    ``flush`` before serving ``/metrics`` makes the answering process's own requests exact. A SIGKILLed
    process loses at most its last second of counts. One flusher thread per process serves every
    recorder (one per app) that is still alive.
    """

    def __init__(self, connection: Callable[[], redis.Redis]):
        self.connection = connection
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._sums: defaultdict[str, float] = defaultdict(float)
        _Flusher.add(self)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        series = f"{method}|{route}|{status}"
        with self._lock:
            self._counts[f"{series}|{_bucket(seconds, HTTP_BUCKETS)}"] += 1
            self._counts[f"{series}|count"] += 1
            self._sums[f"{series}|sum"] += seconds
        _Flusher.ensure_running()

    def flush(self) -> None:
        """Add the buffer to Redis in one round trip; on a Redis error keep it for the next try."""
        with self._lock:
            counts, sums = self._counts, self._sums
            self._counts, self._sums = Counter(), defaultdict(float)
        if not counts:
            return
        try:
            with self.connection().pipeline(transaction=False) as pipe:
                for field, n in counts.items():
                    pipe.hincrby(f"{PREFIX}:http", field, n)
                for field, total in sums.items():
                    pipe.hincrbyfloat(f"{PREFIX}:http", field, total)
                pipe.execute()
        except redis.RedisError:
            with self._lock:
                self._counts.update(counts)
                for field, total in sums.items():
                    self._sums[field] += total


class _Flusher:
    """The process's one flusher thread; started on the first observation in each process (after a fork)."""

    recorders: weakref.WeakSet[HttpRecorder] = weakref.WeakSet()
    pid: int | None = None
    lock = threading.Lock()

    @classmethod
    def add(cls, recorder: HttpRecorder) -> None:
        with cls.lock:
            cls.recorders.add(recorder)

    @classmethod
    def ensure_running(cls) -> None:
        if cls.pid == os.getpid():
            return
        with cls.lock:
            if cls.pid == os.getpid():
                return
            cls.pid = os.getpid()
        threading.Thread(target=cls._run, name="zimg-http-metrics", daemon=True).start()
        atexit.register(cls.flush_all)

    @classmethod
    def flush_all(cls) -> None:
        with cls.lock:
            recorders = list(cls.recorders)
        for recorder in recorders:
            recorder.flush()

    @classmethod
    def _run(cls) -> None:
        while True:
            time.sleep(HTTP_FLUSH_S)
            cls.flush_all()


def _cumulative(raw: dict[str, str], bounds: Sequence[float]) -> list[tuple[str, float]]:
    cumulative, buckets = 0, list[tuple[str, float]]()
    for bound in [*map(str, bounds), "+Inf"]:
        cumulative += int(raw.get(bound, 0))
        buckets.append((bound, cumulative))
    return buckets


def http_family(raw: dict[bytes, bytes]) -> HistogramMetricFamily:
    """The web API's request histogram from the ``zimg:metrics:http`` hash."""
    by_series: dict[tuple[str, str, str], dict[str, str]] = {}
    for field, value in raw.items():
        if field.count(b"|") < 3:
            continue
        method, rest = field.decode().split("|", 1)
        route, status, part = rest.rsplit("|", 2)
        by_series.setdefault((method, route, status), {})[part] = value.decode()
    family = HistogramMetricFamily(HTTP_METRIC, HTTP_HELP, labels=["method", "route", "status"])
    for labels, parts in sorted(by_series.items()):
        family.add_metric(list(labels), _cumulative(parts, HTTP_BUCKETS), float(parts.get("sum", 0.0)))
    return family


class RedisCollector(Collector):
    """Reads every number from Redis when Prometheus scrapes; holds no state of its own."""

    def __init__(self, connection: redis.Redis, queues: Sequence[str]):
        self.connection = connection
        self.queues = list(queues)

    def collect(self) -> Iterator[Any]:
        pipe = self.connection.pipeline(transaction=False)
        for name in COUNTERS:
            pipe.hgetall(f"{PREFIX}:{name}")
        for q in self.queues:
            pipe.llen(f"rq:queue:{q}")
            for template in REGISTRIES.values():
                pipe.zcard(template.format(q))
            for name in HISTOGRAMS:
                pipe.hgetall(f"{PREFIX}:hist:{name}:{q}")
        pipe.scard("rq:workers")
        pipe.hgetall(f"{PREFIX}:http")
        answers = iter(pipe.execute())

        helps = {
            "enqueued": "Counted by the producer: jobs enqueued",
            "finished": "Counted by the worker: jobs finished",
            "failed": "Counted by the worker: jobs failed for good (retries exhausted)",
            "images": "Counted by the worker: images generated by inference (cache hits excluded); "
                      "rate() gives images per second",
        }  # fmt: skip
        for name in COUNTERS:
            values = {k.decode(): int(v) for k, v in next(answers).items()}
            family = CounterMetricFamily(f"zimg_{'images_generated' if name == 'images' else 'jobs_' + name}",
                                         helps[name], labels=["queue"])  # fmt: skip
            for q in self.queues:
                family.add_metric([q], values.get(q, 0))
            yield family

        depth = GaugeMetricFamily("zimg_queue_depth", "Read from Redis: jobs waiting in the RQ queue", labels=["queue"])
        registry = GaugeMetricFamily(
            "zimg_jobs_in_registry", "Read from Redis: jobs in each RQ registry (started, scheduled, ...)",
            labels=["queue", "registry"],
        )  # fmt: skip
        hists = {
            name: HistogramMetricFamily(metric, help_text, labels=["queue"])
            for name, (metric, help_text) in HISTOGRAMS.items()
        }
        for q in self.queues:
            depth.add_metric([q], next(answers))
            for reg in REGISTRIES:
                registry.add_metric([q, reg], next(answers))
            for name in HISTOGRAMS:
                raw = {k.decode(): v.decode() for k, v in next(answers).items()}
                hists[name].add_metric([q], _cumulative(raw, DURATION_BUCKETS), float(raw.get("sum", 0.0)))
        yield depth
        yield registry
        yield from hists.values()
        yield GaugeMetricFamily("zimg_workers", "Read from Redis: RQ workers alive (all queues)", value=next(answers))
        yield http_family(next(answers))


def queue_registry(connection: redis.Redis, queues: Sequence[str]) -> CollectorRegistry:
    from .capacity import CapacityCollector  # workers ready and estimated wait, for autoscalers

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(connection, queues))
    registry.register(CapacityCollector(connection, queues))
    return registry


def exposition(connection: redis.Redis, queues: Sequence[str]) -> tuple[bytes, str]:
    """The text a ``GET /metrics`` answers, and its content type."""
    return generate_latest(queue_registry(connection, queues)), CONTENT_TYPE_LATEST
