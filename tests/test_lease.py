"""The lease sweeper on its own (:mod:`workers.lease`): what it does to a job whose lease ran out.

The kill tests with real processes are in test_faults.py; these check the sweep's decisions
directly, on jobs made by the real producer (shipped defaults: 3 retries at 1, 4, 16 s).
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import redis
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import now

from workers.lease import sweep
from zimg_queue.queue import Producer
from zimg_queue.status import job_status


def _start_and_abandon(producer: Producer, redis_conn, job_id: str) -> None:
    """What a worker leaves behind when it is SIGKILLed mid-job: ``started``, a lease that has run out."""
    queue = producer.queue()
    redis_conn.lrem(queue.key, 1, job_id)
    job = producer.fetch(job_id)
    job.set_status(JobStatus.STARTED)
    registry = StartedJobRegistry(queue.name, connection=redis_conn, serializer=JSONSerializer)
    redis_conn.zadd(registry.key, {f"{job_id}:exec-1": time.time() - 1})


def test_an_expired_lease_puts_the_job_back_at_the_front_not_through_the_scheduler(producer: Producer, redis_conn):
    waiting = producer.enqueue("already waiting", width=64, height=64)
    victim = producer.enqueue("its worker died", width=64, height=64, seed=2)
    _start_and_abandon(producer, redis_conn, victim)
    assert sweep(redis_conn, producer.settings.queue_names) == 1
    job = producer.fetch(victim)
    assert job.get_status() == JobStatus.QUEUED  # not SCHEDULED: no wait on RQ's scheduler (issue 12)
    assert producer.queue().job_ids == [victim, waiting]  # it had its turn already: front of the queue
    assert job.retries_left == producer.settings.max_retries - 1
    status = job_status(job)
    assert status["progress"]["stage"] == "waiting_to_run_again" and status["progress"]["reason"] == "WorkerDied"
    assert status["attempts"][0]["error"].startswith("WorkerDied: the worker running this job died")
    assert sweep(redis_conn, producer.settings.queue_names) == 0  # claimed once, whoever sweeps next


def test_with_no_attempts_left_the_job_fails_saying_the_worker_died(redis_conn, settings):
    producer = Producer(redis_conn, settings.with_(max_retries=0))  # changed setting: no attempts left
    victim = producer.enqueue("its worker died", width=64, height=64)
    _start_and_abandon(producer, redis_conn, victim)
    sweep(redis_conn, settings.queue_names)
    status = producer.status(victim)
    assert status["status"] == "failed" and status["error"].startswith("WorkerDied:")
    assert "no attempts left" in status["error"]


def test_a_job_that_fails_for_a_dead_worker_releases_the_jobs_that_wait_for_it(redis_conn, settings):
    """As RQ does for any failed job: a dependent that allows its dependency to fail is queued (same changed
    setting as the test above: no attempts left)."""
    from rq import Queue
    from rq.job import Dependency

    producer = Producer(redis_conn, settings.with_(max_retries=0))
    victim = producer.enqueue("its worker died", width=64, height=64)
    queue = Queue(producer.queue().name, connection=redis_conn, serializer=JSONSerializer)
    after = queue.enqueue("builtins.print", "after", depends_on=Dependency(jobs=[victim], allow_failure=True))
    assert after.get_status() == JobStatus.DEFERRED
    _start_and_abandon(producer, redis_conn, victim)
    assert sweep(redis_conn, settings.queue_names) == 1
    assert producer.fetch(victim).get_status() == JobStatus.FAILED
    assert after.get_status(refresh=True) == JobStatus.QUEUED and after.id in queue.job_ids


def test_a_started_job_whose_worker_went_silent_says_so(producer: Producer, redis_conn):
    job_id = producer.enqueue("running", width=64, height=64)
    job = producer.fetch(job_id)
    job.set_status(JobStatus.STARTED)
    job.heartbeat(now() - timedelta(seconds=60), 15)  # its worker's last sign of life, a minute ago
    status = producer.status(job_id)
    assert status["status"] == "started" and status["progress"]["stage"] == "worker_died", status
    job.heartbeat(now(), 15)
    assert producer.status(job_id)["progress"]["stage"] != "worker_died"


def test_a_retry_overdue_because_its_scheduler_died_is_queued_by_the_sweep(producer: Producer, redis_conn):
    """A killed scheduler keeps RQ's scheduler lock 61 s: retries due meanwhile must not wait for it."""
    from datetime import datetime, timezone

    queue = producer.queue()
    late = producer.fetch(producer.enqueue("retry due 10 s ago", width=64, height=64, seed=1))
    due = producer.fetch(producer.enqueue("retry due now", width=64, height=64, seed=2))
    for job, ago in ((late, 10), (due, 0)):
        redis_conn.lrem(queue.key, 1, job.id)
        queue.schedule_job(job, datetime.fromtimestamp(time.time() - ago, timezone.utc))
    assert sweep(redis_conn, producer.settings.queue_names) == 1
    assert queue.job_ids == [late.id] and late.get_status() == JobStatus.QUEUED
    assert due.get_status() == JobStatus.SCHEDULED  # a live scheduler has a few seconds to take it first


class _Died(BaseException):
    """The sweeping process dying at this point (a SIGKILL, as far as Redis can tell: nothing more is sent)."""


def _cut_short(monkeypatch, owner: object, attr: str, fault: type[BaseException]) -> list[int]:
    """Make the next call of ``owner.attr`` raise ``fault``: the sweep stops half-way there, once.

    Returns a list that holds one item once the fault has fired."""
    real = getattr(owner, attr)
    calls = []

    def once(*args, **kwargs):
        if not calls:
            calls.append(1)
            raise fault("cut short")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, once)
    return calls


@pytest.mark.parametrize("fault", [redis.ConnectionError, _Died], ids=["redis-error", "sweeper-killed"])
@pytest.mark.parametrize("case", ["lease-expired", "lease-expired-no-attempts-left", "retry-overdue"])
def test_a_sweep_cut_short_loses_no_job(monkeypatch, redis_conn, settings, case: str, fault):
    """A sweep that dies (or loses Redis) between finding a job and putting it somewhere leaves it for the next sweep.

    It used to take the entry out of its registry first and re-queue it after: cut short in between, the job was
    in no queue and no registry, ``started`` or ``scheduled`` for ever. Each case sets up what a killed worker
    (or a killed scheduler) leaves, on the shipped retry settings except where it says no attempts are left.
    """
    from datetime import datetime, timezone

    from zimg_queue.claims import ClaimingQueue

    own = settings.with_(max_retries=0) if case == "lease-expired-no-attempts-left" else settings
    producer = Producer(redis_conn, own)
    job_id = producer.enqueue("a sweep is cut short", width=64, height=64)
    if case == "retry-overdue":
        queue = producer.queue()
        redis_conn.lrem(queue.key, 1, job_id)
        queue.schedule_job(producer.fetch(job_id), datetime.fromtimestamp(time.time() - 10, timezone.utc))
    else:
        _start_and_abandon(producer, redis_conn, job_id)
    if case == "lease-expired-no-attempts-left":
        fired = _cut_short(monkeypatch, Job, "_handle_failure", fault)
    else:
        fired = _cut_short(monkeypatch, ClaimingQueue, "push_job_id", fault)
    try:
        assert sweep(redis_conn, own.queue_names) == 0  # a Redis error is logged; the sweep goes on
    except _Died:
        pass
    assert fired
    assert sweep(redis_conn, own.queue_names) == 1  # the next sweep finds it again
    status = producer.status(job_id)
    if case == "lease-expired-no-attempts-left":
        assert status["status"] == "failed" and status["error"].startswith("WorkerDied:")
        assert len(status["attempts"]) == 1  # the cut-short sweep recorded nothing
    else:
        assert status["status"] == "queued" and producer.queue().job_ids == [job_id]
        assert len(status.get("attempts") or []) == (0 if case == "retry-overdue" else 1)
    assert sweep(redis_conn, own.queue_names) == 0


def _overdue_retry(producer: Producer, redis_conn, seconds_ago: float = 10) -> str:
    """A job waiting for its ``Retry`` interval, due ``seconds_ago`` (as RQ's retry leaves it)."""
    from datetime import datetime, timezone

    queue = producer.queue()
    job_id = producer.enqueue("a retry", width=64, height=64)
    redis_conn.lrem(queue.key, 1, job_id)
    queue.schedule_job(producer.fetch(job_id), datetime.fromtimestamp(time.time() - seconds_ago, timezone.utc))
    return job_id


@pytest.fixture
def scheduler(redis_conn, settings):
    """The workers' RQ scheduler (:class:`workers.worker.OrphanAwareScheduler`) holding its locks, in this process."""
    from workers.worker import OrphanAwareScheduler

    s = OrphanAwareScheduler(settings.queue_names, connection=redis_conn, serializer=JSONSerializer)
    s.acquire_locks()
    assert s.acquired_locks
    yield s
    s.release_locks()


def test_the_scheduler_and_the_sweeper_never_queue_a_retry_twice(monkeypatch, producer, redis_conn, scheduler):
    """The sweeper queues a retry its scheduler has left overdue; a scheduler that was only slow, not dead, may be
    moving the same job at that moment. RQ's scheduler reads the due ids, then queues them without looking again:
    a job the sweeper moved in between was queued twice (and ran twice)."""
    from rq.registry import ScheduledJobRegistry

    job_id = _overdue_retry(producer, redis_conn)
    real = ScheduledJobRegistry.get_jobs_to_schedule
    swept: list[int] = []

    def sweeper_runs_right_after(self, *args, **kwargs):
        ids = real(self, *args, **kwargs)
        if ids and not swept:
            swept.append(-1)  # the sweep's own look at the registry is not hooked
            swept[0] = sweep(redis_conn, producer.settings.queue_names)
        return ids

    monkeypatch.setattr(ScheduledJobRegistry, "get_jobs_to_schedule", sweeper_runs_right_after)
    scheduler.enqueue_scheduled_jobs()
    assert swept == [1]  # the sweeper did move it, in between
    assert producer.queue().job_ids == [job_id]


def test_a_retry_the_scheduler_queues_wakes_the_idle_workers(producer: Producer, redis_conn, scheduler):
    """Idle workers wait on a wake list (zimg_queue.claims); RQ's scheduler pushed retries without a token, so a
    waiting worker found them only at its next look, up to half a second later."""
    from zimg_queue.claims import wake_key

    queue = producer.queue()
    redis_conn.delete(wake_key(queue.name))
    job_id = _overdue_retry(producer, redis_conn, seconds_ago=0.5)
    redis_conn.delete(wake_key(queue.name))  # the enqueue's own token, taken by a worker long ago
    scheduler.enqueue_scheduled_jobs()
    assert queue.job_ids == [job_id] and producer.fetch(job_id).get_status() == JobStatus.QUEUED
    assert redis_conn.llen(wake_key(queue.name)) >= 1


def test_a_worker_killed_while_it_schedules_a_retry_loses_no_job(procs, redis_conn):
    """The worker dies after deciding to retry a failed attempt and before its failure transaction is sent.

    RQ's ``Job.retry`` wrote the ``scheduled`` status at once, outside that transaction: killed in between, the job
    said ``scheduled`` while it was in no scheduled registry, and the sweeper, seeing a job no longer ``started``
    behind an expired lease, dropped the lease and left it there for ever (the soak stalled on one such job when
    ten busy workers were killed in a run). A real worker process on the shipped retry settings, ended with
    ``os._exit`` right there: as far as Redis can tell, a SIGKILL at that instant.
    """
    import subprocess
    import sys

    from tests.conftest import ROOT

    procs.inference(latency_a="0", latency_b="0", fail_rate="1")
    producer = Producer(redis_conn, procs.settings)
    job_id = producer.enqueue("its worker dies as it schedules a retry", width=64, height=64)
    worker = (
        "import os\n"
        "from workers.worker import ZimgJob, ZimgWorker\n"
        "from zimg_queue.connection import connect\n"
        "from zimg_queue.settings import Settings\n"
        "real = ZimgJob.retry\n"
        "def dies_right_after(self, *args, **kwargs):\n"
        "    real(self, *args, **kwargs)\n"
        "    os._exit(9)\n"
        "ZimgJob.retry = dies_right_after\n"
        "s = Settings.from_env()\n"
        "ZimgWorker(s.queue_names, connection=connect(s.redis_url)).work(burst=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", worker], env=procs.env(), cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == 9, done.stderr.decode()[-3000:]  # it died right after the retry was decided
    registry = StartedJobRegistry(producer.queue().name, connection=redis_conn, serializer=JSONSerializer)
    entries = redis_conn.zrange(registry.key, 0, -1)
    assert len(entries) == 1  # its lease: the worker died holding the job
    redis_conn.zadd(registry.key, {entries[0]: time.time() - 1})  # ... and the lease ran out
    assert sweep(redis_conn, procs.settings.queue_names) == 1
    status = producer.status(job_id)
    assert status["status"] == "queued" and producer.queue().job_ids == [job_id], status
    assert status["attempts"][-1]["error"].startswith("WorkerDied:")
