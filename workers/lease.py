"""Job leases: a job whose worker dies is back in its queue within ``lease_ttl`` plus one sweep.

Plain RQ keeps a ``SimpleWorker``'s job in the started registry for
``job_timeout + 60`` s after its last heartbeat, and only a worker's maintenance
pass (every 10 minutes) moves it on, so a SIGKILLed worker's job can sit in
``started`` for many minutes. Here:

* the started-registry entry is a *lease*: its score is ``now + lease_ttl``, and
  :class:`Lease` (a thread beside the job) renews it every few seconds while the
  job runs. A dead process renews nothing, so the lease runs out.
* :class:`Reaper` (a thread in every worker process; a short Redis lock lets one
  process per set of queues sweep at a time) runs :func:`sweep` every
  :data:`SWEEP_S` seconds. It puts the job of each expired entry straight back at the
  *front* of its queue, spending one of its ``Retry`` attempts, or fails it
  (``WorkerDied: ...``) when none are left. Entry out, job in, in one transaction
  watched on the job (:func:`_move`): exactly one sweeper wins, and a sweep cut short
  (its process killed, Redis gone for a moment) leaves the job for the next one.
* Straight back, not through the job's ``Retry`` interval: RQ's own cleanup
  (``StartedJobRegistry.cleanup``) would make the job ``scheduled``, and only RQ's
  scheduler moves scheduled jobs. When the dead worker's scheduler held the
  scheduler lock, that lock lives ``interval + 60`` s and a new scheduler asks for
  it only at maintenance, so a crash cost 32-64 s instead of the lease. The lease
  has already made the job wait, so no interval is needed either.
* the death is written into ``job.meta["attempts"]`` and the job's progress says
  it waits to run again, so the status API says what happened.

Worst case from a kill to the job being queued again: ``lease_ttl`` plus one sweep
(about 17 s with the default 15 s lease).

The same sweep is a backstop for RQ's scheduler: a job due for a ``Retry`` more than
:data:`OVERDUE_S` ago (a live scheduler moves it within about a second) is queued by the
sweeper, so a killed scheduler's lock does not hold other jobs' retries for a minute either.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import redis
from rq import Queue
from rq.exceptions import AbandonedJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.utils import current_timestamp

from zimg_queue.claims import ClaimingQueue, release_expired_claims

from .job import add_attempt, record_attempt

log = logging.getLogger(__name__)

REAPER_LOCK = "zimg:reaper:lock:{}"
WORKER_DIED = "WorkerDied"
#: How often the started registries are swept (any worker, one at a time).
SWEEP_S = 2.0
#: A scheduled job this late has no live scheduler: the sweeper queues it.
OVERDUE_S = 5


def renew_interval(lease_ttl: float) -> float:
    """How often a running job's lease is renewed: a fifth of the lease, 0.5-3 s."""
    return min(3.0, max(0.5, lease_ttl / 5))


def sweep_interval(lease_ttl: float) -> float:
    """How often the started registries are swept: every :data:`SWEEP_S` s, more often for a very short lease."""
    return min(SWEEP_S, max(0.5, lease_ttl / 3))


def _death_note(job: Job) -> str:
    left = job.retries_left or 0
    fate = f"re-queued ({left - 1} retries left after this one)" if left > 0 else "no attempts left: failed"
    return (
        f"{WORKER_DIED}: the worker running this job died (its lease expired: killed, "
        f"out of memory or its machine went away); {fate}"
    )


def record_worker_death(job: Job, exc_type: type, exc_value: BaseException, tb: Any) -> bool:
    """RQ exception handler: note an abandoned job's lost attempt in ``job.meta["attempts"]``.

    Other exceptions pass through untouched (the job records those itself), so this
    is safe on a worker's handler stack.
    """
    if not (isinstance(exc_type, type) and issubclass(exc_type, AbandonedJobError)):
        return True
    record_attempt(job, _death_note(job))
    return True


def sweep(connection: redis.Redis, queue_names: Iterable[str]) -> int:
    """Re-queue (at the front) or fail every job whose lease has run out; returns how many it moved.

    Nothing is taken out of a registry before the job is somewhere else: each job is moved in one
    transaction (:func:`_move`), so a sweep cut short (its process killed, Redis gone for a moment)
    leaves the job where it was, for the next sweep. A Redis error on one job is logged and the sweep
    goes on; anything else propagates.
    """
    found = 0
    for name in queue_names:
        queue = ClaimingQueue(name, connection=connection, serializer=JSONSerializer)
        for job_id in release_expired_claims(queue):  # dequeued by a worker that died before starting it
            log.warning("job %s in %s: its worker died between dequeue and start; back at the front", job_id, name)
            found += 1
        key = StartedJobRegistry(name, connection=connection, serializer=JSONSerializer).key
        entries: list[bytes] = connection.zrangebyscore(key, 0, current_timestamp())  # type: ignore[assignment]
        for entry in entries:
            found += _guarded(abandon, queue, key, entry.decode())
        found += enqueue_overdue(queue)
    return found


def _guarded(move: Callable[[Queue, str, str], bool], queue: Queue, key: str, member: str) -> int:
    try:
        return int(move(queue, key, member))
    except redis.RedisError:  # the job is still where it was: the next sweep tries again
        log.warning("could not move %s out of %s; the next sweep tries again", member, key, exc_info=True)
        return 0


def enqueue_overdue(queue: Queue) -> int:
    """Queue the scheduled jobs (``Retry`` intervals) overdue by :data:`OVERDUE_S`: their scheduler is dead."""
    registry = ScheduledJobRegistry(queue.name, connection=queue.connection, serializer=JSONSerializer)
    moved = 0
    for job_id in registry.get_jobs_to_schedule(current_timestamp() - OVERDUE_S):
        moved += _guarded(partial(queue_scheduled, overdue=True), queue, registry.key, job_id)
    return moved


def queue_scheduled(queue: Queue, key: str, job_id: str, *, overdue: bool = False) -> bool:
    """Move a due job from the scheduled registry ``key`` to the front or back of ``queue`` (as RQ would).

    The one way a scheduled job is queued here, by the sweeper and by the workers' scheduler
    (:class:`workers.worker.OrphanAwareScheduler`) alike, so the two never queue one job twice.
    """

    def move(job: Job, pipe: Any) -> None:
        if overdue:
            log.warning("scheduled job %s in %s is overdue (no live scheduler): swept to its queue", job.id, queue.name)
        queue._enqueue_job(job, pipeline=pipe, at_front=job.should_enqueue_at_front())

    return _move(queue, key, job_id, job_id, JobStatus.SCHEDULED, move) is not None


def abandon(queue: Queue, key: str, entry: str) -> bool:
    """The worker running the job of started-registry ``entry`` died: put the job back at the front, or fail it."""

    def move(job: Job, pipe: Any) -> None:
        add_attempt(job, _death_note(job))
        if job.retries_left and job.retries_left > 0:
            log.warning("lease expired on job %s in %s: re-queued at the front", job.id, queue.name)
            job.retries_left -= 1
            job.meta["progress"] = {
                "stage": "waiting_to_run_again",
                "percent": 0,
                "reason": WORKER_DIED,
                "detail": "the worker running this job died (its lease expired); it is back at the front of its queue",
            }
            queue._enqueue_job(job, pipeline=pipe, at_front=True)  # saves meta and retries_left too
            return
        log.warning("lease expired on job %s in %s: no attempts left, failed", job.id, queue.name)
        job.meta["progress"] = {"stage": "failed", "percent": 0, "reason": WORKER_DIED}
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job._handle_failure(f"{WORKER_DIED}: moved to the failed registry: {AbandonedJobError.__name__}", pipe)
        pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))

    called_back = False

    def before(job: Job) -> None:
        # RQ runs the failure callback (metrics, the failure webhook) before it moves a job that fails; so does
        # this, once, under a timer (the reaper is not the main thread). A sweep cut short after it calls it
        # again: a webhook is delivered at least once, never lost.
        nonlocal called_back
        if not job.retries_left and not called_back:
            exc = AbandonedJobError()
            job.execute_failure_callback(TimerDeathPenalty, AbandonedJobError, exc, traceback.extract_stack())
            called_back = True

    moved = _move(queue, key, entry, entry.split(":")[0], JobStatus.STARTED, move, before=before)
    if moved is not None and moved.get_status(refresh=False) == JobStatus.FAILED:
        queue.enqueue_dependents(moved)  # as RQ does once a job has failed
    return moved is not None


def _move(
    queue: Queue,
    key: str,
    member: str,
    job_id: str,
    status: JobStatus,
    move: Callable[[Job, Any], None],
    *,
    before: Callable[[Job], None] | None = None,
) -> Job | None:
    """Take ``member`` out of the sorted set ``key`` and let ``move`` put its job elsewhere, in one transaction;
    returns the job it moved (``None``: nothing to move).

    ``WATCH`` on the job's hash makes it safe against everything else that may touch the job at the same time:
    another sweeper, RQ's scheduler, the job's own worker coming back to life (its heartbeat writes the hash).
    Whoever writes first wins; this one then reads again and finds nothing left to do. ``before`` runs ahead of
    the transaction (each time it is tried), for work that is not Redis writes.
    """
    with queue.connection.pipeline() as pipe:
        while True:
            try:
                pipe.watch(Job.key_for(job_id))
                score = pipe.zscore(key, member)
                if score is None or score > current_timestamp():
                    return None  # moved by someone else, or its lease renewed meanwhile
                try:
                    job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
                except NoSuchJobError:
                    job = None
                if job is None or job.get_status(refresh=False) != status:
                    pipe.multi()  # gone, or it ended just as its lease ran out: only the entry is left over
                    pipe.zrem(key, member)
                    pipe.execute()
                    return None
                if before is not None:
                    before(job)
                pipe.multi()
                move(job, pipe)
                pipe.zrem(key, member)
                pipe.execute()
            except redis.WatchError:
                continue
            return job


class _Every(threading.Thread):
    """A daemon thread calling ``tick`` every ``interval`` seconds until stopped; a failing tick is logged.

    :meth:`stop` returns once no tick is running (it waits for one in progress, never for the thread
    to wake up and exit: that join cost about 1.5 ms per job under load).
    """

    def __init__(self, name: str, interval: float, tick: Callable[[], Any]):
        super().__init__(name=name, daemon=True)
        self.interval, self.tick, self.stopped = interval, tick, threading.Event()
        self.ticking = threading.Lock()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.ticking:
                if self.stopped.is_set():
                    return
                try:
                    self.tick()
                except Exception:  # Redis briefly down: try again next tick, never kill the worker
                    log.warning("%s tick failed", self.name, exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
        if self is not threading.current_thread():
            with self.ticking:  # a tick in progress finishes first; none starts after this
                pass


class Lease:
    """Renews the running job's lease (via RQ's ``maintain_heartbeats``) from one side thread per worker.

    A ``SimpleWorker`` runs the job in its main thread, so nothing else would
    heartbeat while the job waits on the inference server. Renewal stops after
    the job's own timeout plus one lease, so even a hung job cannot stay
    ``started`` forever. One long-lived thread, told which job to renew, instead
    of one per job: starting a thread costs about a millisecond on a busy box.
    """

    def __init__(self, worker: Any, ttl: int):
        self.worker, self.ttl = worker, ttl
        self.job: Job | None = None
        self.deadline = float("inf")
        self.thread = _Every("lease", renew_interval(ttl), self.renew)

    def renew(self) -> None:
        job = self.job
        if job is None:
            return
        if time.monotonic() > self.deadline:
            log.error("job %s ran past its timeout: letting its lease run out", job.id)
            self.job = None
        elif self.worker.execution is not None:
            self.worker.maintain_heartbeats(job)

    def hold(self, job: Job) -> Lease:
        """Start renewing ``job``'s lease."""
        timeout = job.timeout or 0
        with self.thread.ticking:
            self.job = job
            self.deadline = time.monotonic() + timeout + self.ttl if timeout > 0 else float("inf")
        if not self.thread.is_alive():
            self.thread.start()
        return self

    def release(self) -> None:
        """Stop renewing; returns once no renewal is in progress."""
        with self.thread.ticking:
            self.job = None

    def stop(self) -> None:
        self.thread.stop()


class Reaper:
    """Sweeps the started registries every few seconds; one process per set of queues at a time (``SET NX PX``)."""

    def __init__(self, connection: redis.Redis, queue_names: Iterable[str], lease_ttl: int):
        self.connection, self.queue_names = connection, list(queue_names)
        self.interval = sweep_interval(lease_ttl)
        self.lock_key = REAPER_LOCK.format(",".join(self.queue_names))
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.thread = _Every("reaper", self.interval, self.tick)

    def tick(self) -> int:
        # The lock lapses a little before the next tick, so a dead holder blocks nobody for long.
        if not self.connection.set(self.lock_key, self.token, nx=True, px=int(self.interval * 900)):
            return 0
        return sweep(self.connection, self.queue_names)

    def start(self) -> Reaper:
        if not self.thread.is_alive():
            self.thread.start()
        return self

    def stop(self) -> None:
        self.thread.stop()
