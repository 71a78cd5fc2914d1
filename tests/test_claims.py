"""Dequeue and claim in one step (:mod:`zimg_queue.claims`): a worker that dies holding a job it has just
dequeued, before the job starts, loses nothing.

RQ's multi-queue worker pops with ``BLPOP``: from that moment until the job is in the started registry,
the job is in no queue and no registry. A worker killed (or cut off) in between lost the job for good:
it stayed ``queued`` forever, in no list anyone reads.
"""

from __future__ import annotations

import os
import signal
import time

from rq.job import JobStatus
from rq.serializers import JSONSerializer

from tests.conftest import wait_until
from zimg_queue.queue import Producer


def _idle_workers(redis_conn) -> list[str]:
    names = [n.decode() for n in redis_conn.smembers("rq:workers")]
    return [n for n in names if (redis_conn.hget(n, "state") or b"").decode() == "idle"]


def test_a_worker_killed_holding_a_job_it_just_dequeued_loses_nothing(procs, producer: Producer, redis_conn):
    procs.inference(latency_a="0", latency_b="0")
    victim = procs.worker()
    wait_until(lambda: _idle_workers(redis_conn), timeout=30)
    time.sleep(0.5)  # past its start-up: blocked in its dequeue, waiting for work
    os.kill(victim.pid, signal.SIGSTOP)  # frozen: whatever Redis hands it now sits in its socket, unread
    try:
        job_id = producer.enqueue("dequeued by a worker about to die", width=64, height=64)
        time.sleep(0.5)
    finally:
        victim.kill()  # SIGKILL (a stopped process dies of it too)
    procs.worker()  # a healthy worker: the job must reach it
    lease = producer.settings.lease_ttl
    wait_until(lambda: producer.status(job_id)["status"] == "finished", timeout=lease + 20)


def _dequeue(producer: Producer, lease_ttl: float = 15):
    """What a worker's dequeue does: pop the first job of the first non-empty queue, and claim it."""
    from workers.worker import ZimgJob
    from zimg_queue.claims import ClaimingQueue

    queues = [producer.queue(p) for p in ("high", "normal", "low")]
    cls = ClaimingQueue.with_claim_ttl(lease_ttl)
    return cls.dequeue_any(queues, None, connection=producer.connection, job_class=ZimgJob, serializer=JSONSerializer)


def _expire_claim(redis_conn, queue_name: str, job_id: str) -> None:
    from zimg_queue.claims import claims_key

    assert redis_conn.zscore(claims_key(queue_name), job_id) is not None
    redis_conn.zadd(claims_key(queue_name), {job_id: time.time() - 1})  # as if the lease had run out


def test_a_claim_whose_worker_died_puts_the_job_back_at_the_front_without_spending_an_attempt(
    producer: Producer, redis_conn
):
    from workers.lease import sweep

    victim = producer.enqueue("dequeued, never started", width=64, height=64)
    waiting = producer.enqueue("still waiting", width=64, height=64, seed=2)
    job, queue = _dequeue(producer)
    assert job.id == victim and producer.queue().job_ids == [waiting]  # in no queue now: only the claim holds it
    _expire_claim(redis_conn, queue.name, victim)
    assert sweep(redis_conn, producer.settings.queue_names) == 1
    assert producer.queue().job_ids == [victim, waiting]  # its turn had come: the front
    status = producer.status(victim)
    assert status["status"] == JobStatus.QUEUED.value and status["attempts"] == []  # it never ran
    assert sweep(redis_conn, producer.settings.queue_names) == 0  # given back once


def test_a_worker_that_stalled_past_its_claim_leaves_the_job_to_the_next(producer: Producer, redis_conn):
    from workers.lease import sweep
    from workers.worker import ZimgWorker

    job_id = producer.enqueue("the stalled worker must not run this", width=64, height=64)
    worker = ZimgWorker(producer.settings.queue_names, connection=redis_conn)
    job, queue = _dequeue(producer, worker.lease_ttl)
    worker._claimed_at = time.monotonic() - worker.lease_ttl  # it froze for a whole lease after its dequeue
    _expire_claim(redis_conn, queue.name, job_id)
    sweep(redis_conn, producer.settings.queue_names)  # meanwhile: the job went back to its queue
    worker.execute_job(job, queue)  # the worker thaws and would start it
    assert producer.queue().job_ids == [job_id]  # once, for the next worker
    assert producer.status(job_id)["status"] == JobStatus.QUEUED.value


def test_a_claim_in_time_is_renewed_and_the_job_runs_once(producer: Producer, redis_conn):
    """Stalled for more than half a lease, but the claim still there: renewed, and the job is this worker's."""
    from workers.worker import ZimgWorker
    from zimg_queue.claims import claims_key

    job_id = producer.enqueue("slow start", width=64, height=64)
    worker = ZimgWorker(producer.settings.queue_names, connection=redis_conn)
    job, queue = _dequeue(producer, worker.lease_ttl)
    worker._claimed_at = time.monotonic() - worker.lease_ttl  # stalled, but no sweeper took it yet
    assert worker._still_claimed(job)
    assert redis_conn.zscore(claims_key(queue.name), job_id) > time.time() + worker.lease_ttl - 2


def test_wake_tokens_never_pile_up(producer: Producer, redis_conn):
    from zimg_queue.claims import WAKE_MAX, wake_key

    ids = producer.enqueue_many([{"prompt": f"job {i}", "width": 64, "height": 64} for i in range(WAKE_MAX + 10)])
    assert redis_conn.llen(wake_key(producer.queue().name)) == WAKE_MAX
    for _ in ids:
        assert _dequeue(producer) is not None
    assert _dequeue(producer) is None  # nothing left: the look that found nothing deletes the tokens
    assert redis_conn.llen(wake_key(producer.queue().name)) == 0


def test_a_waiting_dequeue_wakes_for_a_job_pushed_while_it_waits(producer: Producer, redis_conn):
    import threading

    from workers.worker import ZimgJob
    from zimg_queue.claims import ClaimingQueue

    queues = [producer.queue(p) for p in ("high", "normal", "low")]
    found: list = []
    waiter = threading.Thread(
        target=lambda: found.append(
            ClaimingQueue.dequeue_any(queues, 20, connection=redis_conn, job_class=ZimgJob, serializer=JSONSerializer)
        )
    )
    waiter.start()
    time.sleep(0.3)
    job_id = producer.enqueue("wake up", width=64, height=64, job_id="wake-up-1")  # unique: RQ's own script
    waiter.join(timeout=20)
    assert found and found[0][0].id == job_id


def test_the_wait_and_the_pop_in_one_round_trip_work_on_a_redis_without_the_script(producer: Producer, redis_conn):
    """``wait_then_pop`` sends the pop by its SHA; a Redis that never saw the script (restarted, flushed) still
    hands over the job, and a wait that times out with nothing queued finds nothing."""
    from zimg_queue.claims import claims_key, wait_then_pop

    queues = [producer.queue(p) for p in ("high", "normal", "low")]
    assert wait_then_pop(redis_conn, queues, 15, 0.05) is None
    job_id = producer.enqueue("popped after a script flush", width=64, height=64)
    redis_conn.script_flush()
    found = wait_then_pop(redis_conn, queues, 15, 5)
    assert found is not None and found[1] == job_id and found[0] == 1  # the "normal" queue
    assert redis_conn.zscore(claims_key(queues[1].name), job_id) is not None
