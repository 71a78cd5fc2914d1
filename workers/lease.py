"""Job leases: a job whose worker dies is re-queued within about ``lease_ttl`` seconds.

Plain RQ keeps a ``SimpleWorker``'s job in the started registry for
``job_timeout + 60`` s after its last heartbeat, and only a worker's maintenance
pass (every 10 minutes) moves it on, so a SIGKILLed worker's job can sit in
``started`` for many minutes. Here:

* the started-registry entry is a *lease*: its score is ``now + lease_ttl``, and
  :class:`Lease` (a thread beside the job) renews it every ``lease_ttl / 3`` s
  while the job runs. A dead process renews nothing, so the lease runs out.
* :class:`Reaper` (a thread in every worker process; a short Redis lock lets
  one of them sweep at a time) runs RQ's own ``StartedJobRegistry.cleanup``
  every few seconds. That re-queues an expired job through its ``Retry``
  policy, or fails it with ``AbandonedJobError`` when no attempts are left.
* :func:`record_worker_death` (an RQ exception handler) writes the death into
  ``job.meta["attempts"]`` first, so the job's status says the worker died.

Worst case from a kill to the job being queued again: ``lease_ttl`` plus one
sweep interval (20 s with the default 15 s lease).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import redis
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from .job import record_attempt

log = logging.getLogger(__name__)

REAPER_LOCK = "zimg:reaper:lock"
WORKER_DIED = "WorkerDied"


def sweep_interval(lease_ttl: float) -> float:
    """How often leases are renewed and the started registries swept: a third of the lease, 1-5 s."""
    return min(5.0, max(1.0, lease_ttl / 3))


def record_worker_death(job: Job, exc_type: type, exc_value: BaseException, tb: Any) -> bool:
    """RQ exception handler: note an abandoned job's lost attempt in ``job.meta["attempts"]``.

    Other exceptions pass through untouched (the job records those itself), so this
    is safe on a worker's handler stack as well as in :func:`sweep`.
    """
    if not (isinstance(exc_type, type) and issubclass(exc_type, AbandonedJobError)):
        return True
    left = job.retries_left or 0
    fate = f"re-queued ({left - 1} retries left after this one)" if left > 0 else "no attempts left: failed"
    record_attempt(
        job,
        f"{WORKER_DIED}: the worker running this job died (its lease expired: killed, "
        f"out of memory or its machine went away); {fate}",
    )
    return True


def sweep(connection: redis.Redis, queue_names: Iterable[str]) -> int:
    """Re-queue or fail every job whose lease has run out; returns how many were found."""
    found = 0
    for name in queue_names:
        # The job's failure callback runs under a death penalty; the signal-based default works only in
        # the main thread, and the reaper is not it.
        registry = StartedJobRegistry(
            name, connection=connection, serializer=JSONSerializer, death_penalty_class=TimerDeathPenalty
        )
        expired = registry.get_expired_job_ids()
        if expired:
            found += len(expired)
            log.warning("lease expired on %d job(s) in %s: %s", len(expired), name, ", ".join(expired[:10]))
            registry.cleanup(exception_handlers=[record_worker_death])
    return found


class _Every(threading.Thread):
    """A daemon thread calling ``tick`` every ``interval`` seconds until stopped; a failing tick is logged."""

    def __init__(self, name: str, interval: float, tick: Callable[[], Any]):
        super().__init__(name=name, daemon=True)
        self.interval, self.tick, self.stopped = interval, tick, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.tick()
            except Exception:  # Redis briefly down: try again next tick, never kill the worker
                log.warning("%s tick failed", self.name, exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
        if self is not threading.current_thread():
            self.join(timeout=5)


class Lease:
    """Renews a running job's lease (via RQ's ``maintain_heartbeats``) from a side thread.

    A ``SimpleWorker`` runs the job in its main thread, so nothing else would
    heartbeat while the job waits on the inference server. Renewal stops after
    the job's own timeout plus one lease, so even a hung job cannot stay
    ``started`` forever.
    """

    def __init__(self, worker: Any, job: Job, ttl: int):
        self.worker, self.job = worker, job
        self.deadline = time.monotonic() + (job.timeout or 0) + ttl if (job.timeout or 0) > 0 else float("inf")
        self.thread = _Every(f"lease-{job.id}", sweep_interval(ttl), self.renew)

    def renew(self) -> None:
        if time.monotonic() > self.deadline:
            log.error("job %s ran past its timeout: letting its lease run out", self.job.id)
            self.thread.stop()
        elif self.worker.execution is not None:
            self.worker.maintain_heartbeats(self.job)

    def __enter__(self) -> Lease:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.stop()


class Reaper:
    """Sweeps the started registries every few seconds; one process at a time (``SET NX PX``)."""

    def __init__(self, connection: redis.Redis, queue_names: Iterable[str], lease_ttl: int):
        self.connection, self.queue_names = connection, list(queue_names)
        self.interval = sweep_interval(lease_ttl)
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.thread = _Every("reaper", self.interval, self.tick)

    def tick(self) -> int:
        # The lock lapses a little before the next tick, so a dead holder blocks nobody for long.
        if not self.connection.set(REAPER_LOCK, self.token, nx=True, px=int(self.interval * 900)):
            return 0
        return sweep(self.connection, self.queue_names)

    def start(self) -> Reaper:
        if not self.thread.is_alive():
            self.thread.start()
        return self

    def stop(self) -> None:
        self.thread.stop()
