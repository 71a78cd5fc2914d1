"""``ZimgWorker``: an RQ worker with the project's settings baked in.

It runs jobs in its own process (RQ's ``SimpleWorker``): a generate job spends
its time waiting on HTTP, so forking a work horse per job (about 10 ms here)
would only add latency. Several processes run side by side through RQ's
``WorkerPool`` so the inference server has several requests to batch.

A job is claimed in the same step that dequeues it (:mod:`zimg_queue.claims`) and
holds a short lease while it runs (:mod:`workers.lease`), so a worker that is
SIGKILLed, between dequeue and start or mid-job, loses its job to another worker
within about ``lease_ttl`` seconds instead of losing it for good (RQ's multi-queue
``BLPOP``) or holding it for many minutes (RQ's started registry).

Several of RQ's methods are overridden only to send the same Redis writes in fewer
round trips (issue 14 point 8; ``tests/test_worker.py`` counts them). That relies on
RQ 2.x internals, which is one reason ``rq<3`` is pinned.

While the inference server is down, workers take no job (:mod:`workers.outage`):
the backlog waits in its queue instead of spending its retries.

Every job that ends writes one structured log line (``job_finished``: id, queue,
status, attempt, timings, cache hit, backend, batch size); prompts are logged only
with ``ZIMG_LOG_PROMPTS``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
import structlog
from rq import Queue, Retry, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus, _job_stack
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.suspension import WORKERS_SUSPENDED
from rq.utils import current_timestamp, now
from rq.worker import WorkerStatus
from rq.worker_pool import WorkerPool

from zimg_queue.claims import ClaimingQueue, claims_key, empty_a_moment_ago
from zimg_queue.connection import connect
from zimg_queue.processes import die_with
from zimg_queue.settings import Settings

from .job import STOP, call_early, context, drop_early_call
from .lease import Lease, Reaper, queue_scheduled, record_worker_death, sweep
from .outage import AwaitInference
from .result_writes import RESULT_WRITES
from .storage import ImageStore

log = logging.getLogger(__name__)
#: A worker heartbeat this close to one already written (same expiry) is not sent again.
HEARTBEAT_SLACK_S = 1.0
#: What a job's result transaction read for the loop (:class:`Boundary`) serves only this long after it.
BOUNDARY_FRESH_S = 1.0
jobs_log = structlog.get_logger(__name__)


class OrphanAwareScheduler(RQScheduler):
    """RQ's scheduler process, which stops (releasing its locks) once the worker that forked it is gone.

    Without this, a SIGKILLed worker leaves its scheduler running as an orphan forever.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.parent_pid = os.getpid()

    def heartbeat(self) -> None:
        if os.getppid() != self.parent_pid:
            self.log.warning("scheduler: worker %d is gone, stopping", self.parent_pid)
            self._stop_requested = True
        super().heartbeat()

    def enqueue_scheduled_jobs(self) -> None:
        """RQ's, each due job moved by :func:`workers.lease.queue_scheduled`.

        RQ's reads the due ids, then queues them all in one transaction without looking again: a job the
        lease sweeper queued in between (it takes retries a slow scheduler has left 5 s overdue) was queued
        twice. Moved one by one, in a transaction watched on the job, each is queued once, with the wake
        token every push through :class:`~zimg_queue.claims.ClaimingQueue` leaves for idle workers.
        """
        self._status = self.Status.WORKING
        if not self._scheduled_job_registries and self._acquired_locks:
            self.prepare_registries()
        for registry in self._scheduled_job_registries:
            job_ids = registry.get_jobs_to_schedule(current_timestamp())
            if job_ids:
                queue = ClaimingQueue(registry.name, connection=self.connection, serializer=self.serializer)
                for job_id in job_ids:
                    queue_scheduled(queue, registry.key, job_id)
        self._status = self.Status.STARTED


@dataclass(frozen=True)
class Boundary:
    """What the work loop looks at before its next dequeue, read in the previous job's result transaction.

    RQ's loop reads the suspension flag, the breaker reads the outage state and the dequeue pops from the
    queues, each in a round trip of its own, in the millisecond after a result; on a busy box each is a
    wake-up of Redis and of this process while the waiting client's answer is being built. Read with the
    result they cost nothing. They are then at most a few milliseconds old when used: a suspension or an
    outage that begins in between is seen one job later (RQ's own check can miss one by a moment too), and
    a job pushed in between leaves a wake token, so the wait that replaces the empty pop returns at once.
    """

    read_at: float  # time.monotonic()
    suspended: bool
    outage: bool
    queued: bool  # some queue held a job

    @classmethod
    def read(cls, worker: ZimgWorker, pipeline: Any) -> int:
        """Queue the reads in ``pipeline``; returns how many replies :meth:`parse` takes."""
        pipeline.exists(WORKERS_SUSPENDED)
        pipeline.hexists(context().breaker(worker.connection).key, "down_since")
        for queue in worker.queues:
            pipeline.llen(queue.key)
        return 2 + len(worker.queues)

    @classmethod
    def parse(cls, replies: list[Any]) -> Boundary:
        suspended, outage, *lengths = replies
        return cls(time.monotonic(), bool(suspended), bool(outage), any(int(n) for n in lengths))

    def fresh(self) -> bool:
        return time.monotonic() - self.read_at <= BOUNDARY_FRESH_S


class ZimgJob(Job):
    """RQ's ``Job``, with two of its writes moved into the worker's transactions.

    ``perform`` leaves the ``PERSIST`` of the job's key to the start transaction (RQ's sends it as a round
    trip of its own as the job function starts: issue 14 point 8); ``retry`` writes the ``scheduled`` status
    in the failure transaction instead of at once.
    """

    def perform(self) -> Any:
        _job_stack.push(self)
        try:
            self._result = self._execute()
        finally:
            assert self is _job_stack.pop()
        return self._result

    def retry(self, queue: Queue, pipeline: Any) -> None:
        """RQ's, with nothing written outside ``pipeline`` (the worker's failure transaction).

        RQ's writes the ``scheduled`` status at once and the scheduled-registry entry with the transaction: a
        worker killed in between left a job that said ``scheduled`` in no registry, behind a lease the sweeper
        then saw as belonging to a job that had moved on (``tests/test_lease.py``). Now the job is ``started``
        behind its lease until the whole transaction lands.
        """
        interval = self.get_retry_interval()
        assert self.retries_left
        self.retries_left -= 1
        if interval:
            self.set_status(JobStatus.SCHEDULED, pipeline=pipeline)
            queue.schedule_job(self, now() + timedelta(seconds=interval), pipeline=pipeline)
            self.log.info("Job %s: scheduled for retry in %s s, %s remaining", self.id, interval, self.retries_left)
        else:
            queue._enqueue_job(self, pipeline=pipeline, at_front=self.enqueue_at_front_on_retry)
            self.log.info("Job %s: enqueued for retry, %s remaining", self.id, self.retries_left)


class ZimgWorker(SimpleWorker):
    """A ``SimpleWorker`` that speaks JSON, holds a lease on its job and can stop the job it runs."""

    #: One line ends each job: our ``job_finished`` (:func:`log_job_end`), not also RQ's "result is kept for".
    log_result_lifespan = False

    def __init__(self, queues: Iterable[str | Queue], *args, lease_ttl: int | None = None, **kwargs):
        kwargs["serializer"] = JSONSerializer
        kwargs["job_class"] = ZimgJob  # WorkerPool passes RQ's Job explicitly
        # Idle workers wake every 30 s, so maintenance (which restarts a dead scheduler) runs at least that often.
        kwargs.setdefault("maintenance_interval", 30)
        kwargs.setdefault("worker_ttl", 45)
        settings = Settings.from_env()
        lease_ttl = lease_ttl or settings.lease_ttl
        # Dequeue and claim in one step (zimg_queue.claims); a claim lives as long as a lease.
        kwargs["queue_class"] = ClaimingQueue.with_claim_ttl(lease_ttl)
        # Job descriptions hold the prompt: customer data, logged only when the operator says so.
        kwargs.setdefault("log_job_description", settings.log_prompts)
        connection = kwargs.get("connection")
        # WorkerPool builds its queues without a serializer: rebuild them so every read is JSON.
        json_queues = [
            kwargs["queue_class"](q if isinstance(q, str) else q.name, connection=connection, serializer=JSONSerializer)
            for q in queues
        ]
        super().__init__(json_queues, *args, **kwargs)
        pool = multiprocessing.parent_process()
        if pool is not None and pool.pid:  # a process of RQ's WorkerPool (`zimg worker --processes N`)
            die_with(pool.pid)  # stops when its pool dies, however it dies, instead of running on unsupervised
        self.settings = settings
        self.lease_ttl = lease_ttl
        # A worker SIGKILLed mid-write leaves a temporary file: its replacement removes it.
        ImageStore(settings.images_path).remove_orphans()
        self.push_exc_handler(record_worker_death)  # RQ's own maintenance cleanup records deaths too
        self.reaper = Reaper(self.connection, self.queue_names(), self.lease_ttl)
        self.lease = Lease(self, self.lease_ttl)
        self._alive_until = 0.0  # time.monotonic() until which the worker's key is known to live
        self._claimed_at = 0.0  # time.monotonic() when the job in hand was dequeued (and claimed)
        self._idle_written = False  # the job's result transaction wrote the idle state (handle_job_success)
        self._boundary: Boundary | None = None  # what the last result transaction read for the loop

    def get_heartbeat_ttl(self, job: Job) -> int:
        """Every started-registry write RQ makes uses the short lease, not ``job_timeout + 60``."""
        return self.lease_ttl

    # --- Round trips around each job (issue 14 point 8) ------------------------------------------------
    # RQ's worker makes about a dozen Redis round trips between the dequeue and the result; on a busy box
    # each costs a wake-up of Redis and of this process, and a waiting client pays for every one. The
    # overrides below keep what RQ writes, in fewer trips: tests/test_worker.py counts them.

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's, in one round trip instead of two, and skipped while the worker's key already lives that long.

        RQ sends one right after the dequeue (on the job's path), one after the job and one before the
        next dequeue, a few milliseconds apart. One written less than ``HEARTBEAT_SLACK_S`` ago with the
        same expiry makes the next redundant; one with a shorter expiry (the lease, written when a job
        starts) does not, so the key never lives shorter than RQ asks.
        """
        timeout = timeout or self.worker_ttl + 60
        due = time.monotonic() + timeout
        if pipeline is None:
            if due - HEARTBEAT_SLACK_S <= self._alive_until:
                return
            with self.connection.pipeline() as pipe:
                super().heartbeat(timeout, pipeline=pipe)
                pipe.execute()
        else:
            super().heartbeat(timeout, pipeline=pipeline)
        self._alive_until = due

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """RQ's, skipping a write of the state the worker is already in (RQ sets ``idle`` twice per job)."""
        if pipeline is None and state == self._state:
            return
        super().set_state(state, pipeline=pipeline)

    def prepare_execution(self, job: Job) -> Execution | None:  # type: ignore[override]
        """Nothing here: :meth:`prepare_job_execution` creates the execution in its own transaction."""
        self.execution = None  # the lease renews nothing until the new execution exists
        return None

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """RQ's ``prepare_execution`` and ``prepare_job_execution`` in one transaction instead of two.

        The same transaction ends the job's claim (:mod:`zimg_queue.claims`): from then on the started
        registry holds it (:meth:`_still_claimed` made sure the claim had not expired).
        """
        claim = claims_key(job.origin)
        with self.connection.pipeline() as pipeline:
            heartbeat_ttl = self.get_heartbeat_ttl(job)
            self.execution = Execution.create(job, heartbeat_ttl, pipeline=pipeline, worker_name=self.name)
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            self.set_current_job_id(job.id, pipeline=pipeline)
            self.set_current_job_working_time(0, pipeline=pipeline)
            self.heartbeat(heartbeat_ttl, pipeline=pipeline)
            job.heartbeat(now(), heartbeat_ttl, pipeline=pipeline)
            job.prepare_for_execution(self.name, pipeline=pipeline)
            pipeline.persist(job.key)  # RQ's Job.perform does this in a round trip of its own (see ZimgJob)
            pipeline.zrem(claim, job.id)
            pipeline.execute()
        self.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")

    def _still_claimed(self, job: Job) -> bool:
        """Whether this worker may start ``job``: its claim (:mod:`zimg_queue.claims`) has not expired.

        Normally the job starts milliseconds after its dequeue and nothing is checked. A worker that
        stalled for half a lease in between renews the claim first (one round trip); a claim already gone
        means the sweeper gave the job back to its queue for another worker, so this one leaves it.
        """
        if time.monotonic() - self._claimed_at <= self.lease_ttl / 2:
            return True
        claim = claims_key(job.origin)
        if self.connection.zadd(claim, {job.id: time.time() + self.lease_ttl}, xx=True, ch=True):
            return True
        log.warning("job %s: its claim expired before this worker could start it; another worker runs it", job.id)
        return False  # still idle: nothing was written for this job

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry) -> None:
        """RQ's, in one round trip: no ``WATCH`` and ``SMEMBERS`` of the job's dependents before the result.

        RQ watches the dependents set so that a dependent added while the result is written is enqueued
        too. Here the same transaction reads the set (``SMEMBERS`` inside ``MULTI``, so it is exactly the
        set at the moment the job became ``finished``), and the dependents, if any, are enqueued right
        after by RQ's own ``enqueue_dependents``, off the waiting client's path. A dependent registered
        after the transaction sees the job ``finished`` and is enqueued by RQ at once (RQ watches the
        dependency's status when it registers one). Generate jobs never have dependents; other RQ jobs
        on these queues keep RQ's behaviour.
        """
        with self.connection.pipeline() as pipeline:
            self.increment_successful_job_count(pipeline=pipeline)
            assert job.started_at is not None and job.ended_at is not None
            self.increment_total_working_time(job.ended_at - job.started_at, pipeline)
            result_ttl = job.get_result_ttl(self.default_result_ttl)
            if result_ttl != 0:
                job._handle_success(
                    result_ttl,
                    pipeline=pipeline,
                    worker_name=self.name,
                    execution_id=self.execution.id if self.execution else None,
                    execution_started_at=self.execution.created_at if self.execution else None,
                    execution_ended_at=job.ended_at,
                )
            if job.repeats_left is not None and job.repeats_left > 0:
                from rq.repeat import Repeat

                Repeat.schedule(job, queue, pipeline=pipeline)
            else:
                job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
            self.cleanup_execution(job, pipeline=pipeline)
            # What RQ writes in round trips of its own once the job is done (a heartbeat, the idle state),
            # here at no cost; the calls RQ makes later then find nothing to do. The idle state is written
            # without set_state, which would say "idle" at once: RQ answers a stop signal that finds the worker
            # idle by raising StopRequested on the spot, and that must not break this transaction.
            self.heartbeat(pipeline=pipeline)
            pipeline.hset(self.key, "state", WorkerStatus.IDLE)
            reads = Boundary.read(self, pipeline)  # and what the loop reads before its next dequeue
            pipeline.smembers(job.dependents_key)
            replies = pipeline.execute()
        self._idle_written = True  # execute_job says "idle" once the job is over, without writing it again
        self._boundary = Boundary.parse(replies[-1 - reads : -1])
        dependents = replies[-1]
        if dependents:
            queue.enqueue_dependents(job)

    def cleanup_execution(self, job: Job, pipeline: Any) -> None:
        """RQ's, plus our writes for the job's end (:mod:`workers.result_writes`) in the same transaction."""
        super().cleanup_execution(job, pipeline)
        RESULT_WRITES.apply(pipeline)

    def _start_scheduler(self, burst: bool = False, logging_level: str | None = "INFO", *args, **kwargs) -> None:
        """RQ's ``_start_scheduler``, with :class:`OrphanAwareScheduler` in place of ``RQScheduler``."""
        self.scheduler = OrphanAwareScheduler(
            self.queues, connection=self.connection, logging_level=logging_level or "INFO", serializer=self.serializer
        )
        self.scheduler.acquire_locks()
        if self.scheduler.acquired_locks:
            if burst:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()
                finally:
                    self.scheduler.release_locks()
                    self.scheduler.register_death()
            else:
                self.scheduler.start()

    def _fresh_boundary(self) -> Boundary | None:
        return self._boundary if self._boundary is not None and self._boundary.fresh() else None

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's, unless the last result transaction just read that the workers are not suspended."""
        boundary = self._fresh_boundary()
        if boundary is not None and not boundary.suspended:
            return
        super().check_for_suspension(burst)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        """RQ's; when the last result transaction saw every queue empty, it waits for a job before the first pop.

        RQ's dequeue pops first and waits after; right after a result that pop would find nothing (one round
        trip for nothing). A job pushed since leaves a wake token, so the wait returns at once.
        """
        self.reaper.start()  # here, not in __init__: after the scheduler has forked, and only in a working worker
        self.await_inference()
        boundary, self._boundary = self._fresh_boundary(), None
        # Every queue empty a moment ago: the wait and the pop go in one round trip (zimg_queue.claims).
        hint = empty_a_moment_ago() if boundary is not None and not boundary.queued else nullcontext()
        with hint:
            found = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        self._claimed_at = time.monotonic()
        return found

    def await_inference(self) -> None:
        """Take no job while the shared breaker says the inference server is down (see :mod:`workers.outage`)."""
        boundary = self._fresh_boundary()
        if boundary is not None and not boundary.outage:
            return
        breaker = context().breaker(self.connection)
        try:
            if breaker.state() is None:
                return
            self.procline("Waiting for the inference server")
            turn = breaker.wait_turn(heartbeat=self.heartbeat)
        except (redis.ConnectionError, redis.TimeoutError):
            return  # Redis is away: RQ's own dequeue loop waits for it (and says so) without quitting
        log.info("worker %s: inference server breaker says %s", self.name, turn)

    def handle_job_retry(
        self, job: Job, queue: Queue, retry: Retry, started_job_registry: StartedJobRegistry, execution: Execution
    ) -> None:
        """A job waiting for the inference server goes back to the *front* of its queue, its retries untouched."""
        if not isinstance(retry, AwaitInference):
            return super().handle_job_retry(job, queue, retry, started_job_registry, execution)
        with self.connection.pipeline() as pipe:
            queue._enqueue_job(job, pipeline=pipe, at_front=True)
            self.cleanup_execution(job, pipeline=pipe)
            pipe.execute()

    def clean_registries(self) -> None:
        sweep(self.connection, self.queue_names())  # first, so a death found at start-up is recorded
        super().clean_registries()

    def execute_job(self, job: Job, queue: Queue) -> None:
        STOP.clear()
        self._idle_written = False
        self._boundary = None  # only a result transaction reads it anew (a failed job's loop reads as RQ's does)
        self.prepare_execution(job)
        if not self._still_claimed(job):
            return
        call_early(job)  # the inference call runs while the start transaction is written
        attempt = len(job.meta.get("attempts", [])) + 1  # this execution's number, whatever it records
        self.lease.hold(job)
        RESULT_WRITES.open()
        try:
            self.perform_job(job, queue)
        finally:
            self.lease.release()
            RESULT_WRITES.close(self.connection)
            drop_early_call(job)
        try:  # still BUSY: a SIGTERM now is a warm shutdown after this, not an exception in here
            log_job_end(job, queue, attempt, log_prompts=self.settings.log_prompts)
        except Exception:  # a log line must never cost a job
            log.warning("could not log the end of job %s", job.id, exc_info=True)
        if self._idle_written:
            self._state = WorkerStatus.IDLE  # the result transaction wrote it
        else:
            self.set_state(WorkerStatus.IDLE)

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        """The job function returned: stop renewing before RQ writes the result and drops the lease."""
        self.lease.release()
        job.ended_at = now()  # RQ's, less its final heartbeat write: one round trip before the result, for nothing

    def unsubscribe(self) -> None:
        """RQ's, with a bounded wait: its pubsub thread blocks up to 60 s per read, and RQ joins it with no
        timeout, so a worker stopped right after a job could take a minute to exit (the thread is a daemon)."""
        if self.pubsub_thread:
            self.pubsub_thread.stop(timeout=0.5)

    def teardown(self) -> None:
        self.reaper.stop()
        self.lease.stop()
        super().teardown()

    def kill_horse(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """RQ's stop-job command lands here; the job notices ``STOP`` and ends as ``stopped``."""
        STOP.set()


def log_job_end(job: Job, queue: Queue, attempt: int, *, log_prompts: bool = False) -> None:
    """One structured line per ended execution: what operators graph and grep (no prompt unless asked)."""
    state = job.get_status(refresh=False)
    status = state.value if isinstance(state, JobStatus) else str(state)
    result: dict[str, Any] = job._result if status == JobStatus.FINISHED.value and isinstance(job._result, dict) else {}
    fields: dict[str, Any] = {
        "job_id": job.id,
        "request_id": job.meta.get("request_id") or job.id,  # what the inference server logged it under
        "queue": queue.name,
        "status": status,
        "attempt": attempt,
        "queued_s": result.get("queued_s"),
        "inference_s": result.get("inference_s"),
        "total_s": result.get("total_s", _seconds(job)),
        "cache_hit": result.get("cache_hit"),
        "backend": result.get("backend"),
        "batch_size": result.get("batch_size"),
    }
    if status in (JobStatus.QUEUED.value, JobStatus.SCHEDULED.value):  # it runs again: why
        waiting = (job.meta.get("progress") or {}).get("stage") == "waiting_for_inference_server"
        fields["next"] = "wait_for_inference_server" if waiting else "retry"
    if log_prompts and job.args and isinstance(job.args[0], dict):
        fields["prompt"] = job.args[0].get("prompt")
    level = "warning" if status == JobStatus.FAILED.value else "info"
    getattr(jobs_log, level)("job_finished", **fields)


def _seconds(job: Job) -> float | None:
    if job.started_at is None or job.ended_at is None:
        return None
    return round((job.ended_at - job.started_at).total_seconds(), 4)


def run(settings: Settings, *, processes: int = 1, burst: bool = False, logging_level: str = "INFO") -> None:
    """Run ``processes`` workers on the priority queues (high, then normal, then low)."""
    assert settings.redis_url, "resolve the Redis URL before starting workers"
    connection = connect(settings.redis_url)
    if processes <= 1:
        worker = ZimgWorker(settings.queue_names, connection=connection, lease_ttl=settings.lease_ttl)
        worker.work(burst=burst, with_scheduler=True, logging_level=logging_level)
        return
    pool = WorkerPool(
        settings.queue_names,
        connection=connection,
        num_workers=processes,
        worker_class=ZimgWorker,
        serializer=JSONSerializer,
    )
    pool.start(burst=burst, logging_level=logging_level)
