"""``ZimgWorker`` (:mod:`workers.worker`) on its own: what one job costs in Redis round trips.

Issue 14 point 8: the queue's overhead per job is mostly round trips on a busy box, each a wake-up of
Redis and of the worker. These tests count them (no timing): between the dequeue and the result
becoming visible to a waiting client, every round trip is latency the client pays.
"""

from __future__ import annotations

import time

from tests.conftest import in_process_worker, round_trips, wait_until
from zimg_queue.queue import Producer


def _run_burst(
    procs, redis_conn, monkeypatch, jobs: int, latency_s: str = "0", *, mark_calls: bool = False
) -> tuple[list[str], list[tuple[str, ...]]]:
    """``jobs`` generate jobs run by an in-process ``ZimgWorker`` (burst) against a real sim server.

    ``mark_calls``: a ``("CALL",)`` entry among the round trips where the worker sends an inference call.
    """
    from workers import job as job_module
    from workers.worker import ZimgWorker

    with in_process_worker(procs, monkeypatch, latency_s=latency_s):
        producer = Producer(redis_conn, procs.settings)
        ids = [producer.enqueue("round trips", width=64, height=64, seed=i) for i in range(jobs)]
        worker = ZimgWorker(procs.settings.queue_names, connection=redis_conn)
        with round_trips() as trips:
            if mark_calls:
                send = job_module.in_background

                def marked(fn, *args, **kwargs):
                    if getattr(fn, "__name__", "") == "generate":
                        trips.append(("CALL",))
                    return send(fn, *args, **kwargs)

                monkeypatch.setattr(job_module, "in_background", marked)
            worker.work(burst=True)
    assert [producer.status(i)["status"] for i in ids] == ["finished"] * jobs
    return ids, trips


def _critical_paths(trips: list[tuple[str, ...]]) -> list[list[tuple[str, ...]]]:
    """Per job: the round trips from the dequeue that found it up to and including the one writing its result.

    The dequeue is one script (``zimg_queue.claims``: pop, read the job, claim it); the start transaction
    that follows it says which job it was.
    """
    paths, current = [], None
    for i, trip in enumerate(trips):
        if trip[-1] == "EVALSHA" and i + 1 < len(trips) and "PERSIST" in trips[i + 1]:
            current = [trip]
            continue
        if current is not None:
            current.append(trip)
            if "XADD" in trip:  # RQ's result stream: a waiting client wakes here
                paths.append(current)
                current = None
    return paths


def test_few_round_trips_between_dequeue_and_the_result(procs, redis_conn, monkeypatch):
    from workers.job import FIRST_PROGRESS_S

    ids, trips = _run_burst(procs, redis_conn, monkeypatch, jobs=4)
    paths = _critical_paths(trips)
    assert len(paths) == len(ids), trips
    producer = Producer(redis_conn, procs.settings)
    for path, job_id in zip(paths, ids):  # one worker, one queue: jobs run in the order they were enqueued
        # The dequeue (which reads the job), one start transaction and the result transaction: a call that answers
        # within FIRST_PROGRESS_S writes no progress of its own (on a loaded machine a zero-latency call can take
        # longer: then, and only then, one progress write). RQ's own worker made 12 here (BLPOP, then 11 more)
        # before issue 14 point 8, and 4 before its second pass (a progress write overlapping the inference call).
        progress = [trip for trip in path if trip == ("HSET",)]
        assert len(path) == 3 + len(progress) and len(progress) <= 1, "\n".join(map(str, path))
        assert not progress or producer.status(job_id)["result"]["inference_s"] >= FIRST_PROGRESS_S
        assert "XADD" in path[-1] and "HINCRBYFLOAT" in path[-1], "metrics ride in the result's transaction"


def test_the_inference_call_goes_out_before_the_start_transaction(procs, redis_conn, monkeypatch):
    """Right after the dequeue the worker sends the job's inference call, then writes the start transaction
    while the call runs: the call no longer waits for that round trip (issue 14 point 8)."""
    ids, trips = _run_burst(procs, redis_conn, monkeypatch, jobs=3, mark_calls=True)
    dequeues = [i for i, trip in enumerate(trips) if trip[-1] == "EVALSHA"]
    calls = [i for i, trip in enumerate(trips) if trip == ("CALL",)]
    starts = [i for i, trip in enumerate(trips) if "PERSIST" in trip]
    assert len(calls) == len(starts) == len(ids), "\n".join(map(str, trips))
    for start, call in zip(starts, calls):
        dequeue = max(i for i in dequeues if i < start)
        assert dequeue < call < start, "\n".join(map(str, trips[dequeue : start + 1]))


def test_a_slow_inference_call_shows_that_the_job_waits_for_it(procs, redis_conn, monkeypatch):
    """A call still running after FIRST_PROGRESS_S writes ``waiting_for_inference`` while it runs."""
    from workers.job import FIRST_PROGRESS_S

    ids, trips = _run_burst(procs, redis_conn, monkeypatch, jobs=1, latency_s=str(FIRST_PROGRESS_S * 4))
    (path,) = _critical_paths(trips)
    assert len(path) == 4, "\n".join(map(str, path))
    assert path[2] == ("HSET",)  # the progress write, between the start and the result
    assert Producer(redis_conn, procs.settings).status(ids[0])["progress"]["stage"] == "done"


def test_the_final_progress_and_the_metrics_are_written_with_the_result(procs, redis_conn, monkeypatch):
    from zimg_queue.metrics import PREFIX

    ids, _ = _run_burst(procs, redis_conn, monkeypatch, jobs=2)
    producer = Producer(redis_conn, procs.settings)
    for job_id in ids:
        status = producer.status(job_id)
        assert status["progress"] == {"stage": "done", "percent": 100}
        assert status["result"]["path"]
    assert int(redis_conn.hget(f"{PREFIX}:finished", "zimg-normal") or 0) >= len(ids)


def test_a_heartbeat_is_skipped_only_while_the_worker_key_lives_long_enough(redis_conn, settings):
    from workers.worker import ZimgWorker

    worker = ZimgWorker(settings.queue_names, connection=redis_conn)
    worker.register_birth()
    try:
        full = worker.worker_ttl + 60  # what RQ asks of a heartbeat without a timeout
        with round_trips() as trips:
            worker.heartbeat()
            worker.heartbeat()  # a moment later, same expiry: redundant
        assert trips == [("HSET", "EXPIRE")]
        assert redis_conn.ttl(worker.key) > full - 2
        with redis_conn.pipeline() as pipe:  # a job starts: the key's expiry drops to the lease
            worker.heartbeat(worker.lease_ttl, pipeline=pipe)
            pipe.execute()
        assert redis_conn.ttl(worker.key) <= worker.lease_ttl
        with round_trips() as trips:
            worker.heartbeat()  # so the next plain heartbeat is sent, and the key lives long again
        assert trips == [("HSET", "EXPIRE")]
        assert redis_conn.ttl(worker.key) > full - 2
    finally:
        worker.register_death()


def test_a_plain_rq_worker_still_records_the_metrics_at_once(procs, redis_conn, monkeypatch):
    """Under RQ's own worker no closing transaction is open: the callbacks write as they did."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from zimg_queue.metrics import PREFIX

    with in_process_worker(procs, monkeypatch):
        producer = Producer(redis_conn, procs.settings)
        job_id = producer.enqueue("plain worker", width=64, height=64)
        SimpleWorker(procs.settings.queue_names, connection=redis_conn, serializer=JSONSerializer).work(burst=True)
    status = producer.status(job_id)
    assert status["status"] == "finished" and status["progress"]["stage"] == "done"
    assert int(redis_conn.hget(f"{PREFIX}:finished", "zimg-normal") or 0) == 1


def test_a_job_that_depends_on_a_generate_job_is_enqueued_when_it_finishes(procs, redis_conn, monkeypatch):
    """The result transaction reads the dependents set instead of RQ's WATCH first: dependents still run."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    from workers.worker import ZimgWorker

    with in_process_worker(procs, monkeypatch):
        producer = Producer(redis_conn, procs.settings)
        parent = producer.enqueue("a parent", width=64, height=64)
        theirs = Queue("their-app", connection=redis_conn, serializer=JSONSerializer)  # not a queue our workers run
        child = theirs.enqueue_call("os.getcwd", depends_on=parent)
        assert theirs.job_ids == []  # deferred until its parent finishes
        ZimgWorker(procs.settings.queue_names, connection=redis_conn).work(burst=True)
    assert producer.status(parent)["status"] == "finished"
    assert theirs.job_ids == [child.id]


def test_no_round_trip_between_a_result_and_the_next_dequeue(procs, redis_conn, monkeypatch):
    """The worker's way back to the queue: a sequential client's next job waits for it on a busy box.

    What the loop reads before its next dequeue (RQ's suspension flag, the inference breaker, whether a
    queue holds a job) rides in the result's transaction.
    """
    ids, trips = _run_burst(procs, redis_conn, monkeypatch, jobs=3)
    results = [i for i, trip in enumerate(trips) if "XADD" in trip]
    dequeues = [i for i, trip in enumerate(trips) if trip == ("EVALSHA",)]
    assert len(results) == len(ids)
    for end in results[:-1]:
        nxt = min(i for i in dequeues if i > end)
        between = trips[end + 1 : nxt]
        # RQ's own worker made 8 here (a suspension check and two heartbeats of two commands each, two writes of
        # the idle state); before issue 14 point 8's second pass, 2 (the suspension check, the breaker's read).
        assert between == [], "\n".join(map(str, between))
        assert "EXISTS" in trips[end] and "HEXISTS" in trips[end] and "LLEN" in trips[end]


def test_an_idle_worker_goes_from_the_result_straight_to_waiting(procs, redis_conn, monkeypatch):
    """With every queue empty at the result, the next trip is the wait for a wake token: no pop that finds nothing."""
    from workers.worker import ZimgWorker

    with in_process_worker(procs, monkeypatch):
        producer = Producer(redis_conn, procs.settings)
        job_id = producer.enqueue("round trips", width=64, height=64, seed=1)
        worker = ZimgWorker(procs.settings.queue_names, connection=redis_conn)
        with round_trips() as trips:
            worker.work(max_idle_time=1)  # not burst: it waits for the next job, then gives up after 1 s
    assert producer.status(job_id)["status"] == "finished"
    end = next(i for i, trip in enumerate(trips) if "XADD" in trip)
    assert trips[end + 1] == ("BLPOP", "EVALSHA"), "\n".join(map(str, trips[end + 1 : end + 4]))


def test_a_job_that_wakes_an_idle_worker_is_dequeued_in_the_same_round_trip(procs, redis_conn, monkeypatch):
    """The wait for a wake token and the pop that follows it go to Redis together (Redis runs the pop the moment
    the wait returns): an idle worker's next job starts one round trip after it was pushed, not two."""
    import threading

    from workers.worker import ZimgWorker

    with in_process_worker(procs, monkeypatch):
        producer = Producer(redis_conn, procs.settings)
        first = producer.enqueue("round trips", width=64, height=64, seed=1)
        ids = [first]

        def push_once_idle() -> None:  # the second job arrives while the worker waits
            wait_until(lambda: producer.status(first)["status"] == "finished", timeout=30, interval=0.02)
            time.sleep(0.3)
            ids.append(producer.enqueue("round trips", width=64, height=64, seed=2))

        pusher = threading.Thread(target=push_once_idle)
        worker = ZimgWorker(procs.settings.queue_names, connection=redis_conn)
        with round_trips(thread=threading.get_ident()) as trips:
            pusher.start()
            worker.work(max_idle_time=4)  # one wait: no plain pop can come before the pushed job
        pusher.join()
    assert [producer.status(i)["status"] for i in ids] == ["finished"] * 2
    starts = [i for i, trip in enumerate(trips) if "PERSIST" in trip]
    assert len(starts) == 2
    assert trips[starts[1] - 1] == ("BLPOP", "EVALSHA"), "\n".join(map(str, trips))


def suspend_workers() -> str:
    """A job that suspends every worker (``rq suspend``), as an operator would while it runs."""
    from rq import get_current_job
    from rq.suspension import suspend

    job = get_current_job()
    assert job is not None
    suspend(job.connection)
    return "suspended"


def test_a_worker_suspended_during_a_job_takes_no_further_job(procs, redis_conn, monkeypatch):
    """The suspension flag read with the result still stops the worker before its next job."""
    from rq.serializers import JSONSerializer
    from rq.suspension import resume

    from workers.worker import ZimgWorker
    from zimg_queue.claims import ClaimingQueue

    with in_process_worker(procs, monkeypatch):
        producer = Producer(redis_conn, procs.settings)
        queue = ClaimingQueue(procs.settings.queue_names[0], connection=redis_conn, serializer=JSONSerializer)
        first = queue.enqueue(suspend_workers)
        waiting = producer.enqueue("after the suspension", width=64, height=64, seed=2, priority="high")
        worker = ZimgWorker(procs.settings.queue_names, connection=redis_conn)
        try:
            worker.work(burst=True)  # burst: a suspended worker quits instead of sleeping
        finally:
            resume(redis_conn)
    assert first.get_status(refresh=True) == "finished"
    assert producer.status(waiting)["status"] == "queued"


def test_a_warm_shutdown_during_the_result_transaction_still_finishes_the_job(procs, redis_conn, monkeypatch):
    """SIGINT/SIGTERM while the worker writes a job's result: the job ends ``finished`` and the worker then stops.

    RQ raises ``StopRequested`` at once when the worker's state says idle. The result transaction also writes the
    idle state, and once set the worker's own state said idle before the transaction had run: a stop signal
    arriving then broke the transaction (the job went back for a retry) and left the worker running, an orphan
    once its pool gave up on it (seen with `zimg up --demo`).
    """
    import signal

    from redis.client import Pipeline

    from workers.worker import ZimgWorker

    execute = Pipeline.execute
    with in_process_worker(procs, monkeypatch):
        producer = Producer(redis_conn, procs.settings)
        job_id = producer.enqueue("stopped while saving", width=64, height=64)
        worker = ZimgWorker(procs.settings.queue_names, connection=redis_conn)

        def stop_on_the_result(self, *args, **kwargs):
            if any(c[0][0] == "XADD" for c in self.command_stack):
                worker.request_stop(signal.SIGINT, None)  # the signal lands here
            return execute(self, *args, **kwargs)

        monkeypatch.setattr(Pipeline, "execute", stop_on_the_result)
        worker.work()  # not burst: only the stop request ends it
    status = producer.status(job_id)
    assert status["status"] == "finished", status
    assert status["attempts"] == []


def test_a_worker_pools_processes_stop_when_the_pool_is_killed(procs, redis_conn):
    """``zimg worker --processes N`` killed outright (``kill -9``, the OOM killer): its N worker processes stop too.

    RQ's pool forks them; nothing told them their pool was gone, so they ran on unsupervised (no one to replace
    one that died) and, once their Redis went away as well, retried it for ever: the test suite's own runs left
    such orphans behind for over an hour.
    """
    import os
    import signal

    from tests.conftest import running
    from zimg_queue.processes import children_of

    pool = procs.worker(processes=2)
    workers = wait_until(lambda: len(children_of(pool.pid)) == 2 and children_of(pool.pid), timeout=60)
    wait_until(lambda: redis_conn.scard("rq:workers") >= 2, timeout=60)
    pool.kill()
    try:
        wait_until(lambda: not any(running(pid) for pid in workers), timeout=30)
    finally:
        for pid in workers:  # before the change they outlived the test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_an_early_call_serves_only_its_own_job_and_is_withdrawn_when_left(procs, redis_conn, monkeypatch):
    """``call_early``'s call is taken only by the job and the request it was sent for; one left untaken (its job
    failed before its call) is withdrawn from the server; a request the image folder answers sends nothing."""
    from dataclasses import replace

    from workers import job as job_module
    from zimg_queue.request import GenerateRequest

    with in_process_worker(procs, monkeypatch):
        producer = Producer(redis_conn, procs.settings)
        job, other = (producer.fetch(producer.enqueue("early", width=64, height=64, seed=i)) for i in (1, 2))
        req = GenerateRequest.from_dict(job.args[0])

        job_module.call_early(job)
        assert job_module._take_early_call(other, GenerateRequest.from_dict(other.args[0])) is None
        job_module.call_early(job)
        assert job_module._take_early_call(job, replace(req, width=128)) is None  # e.g. downscaled after an OOM
        job_module.call_early(job)
        early = job_module._take_early_call(job, req)
        assert early is not None and early.future.result(timeout=30).image_b64

        withdrawn: list[str] = []
        ctx = job_module.context()
        monkeypatch.setattr(ctx.client, "cancel", withdrawn.append)
        job_module.call_early(job)
        job_module.drop_early_call(job)
        wait_until(lambda: withdrawn, timeout=10, interval=0.01)
        assert withdrawn == [job.id]

        ctx.store.write(req.key, req.output_format, b"an image made earlier")
        job_module.call_early(job)
        assert job_module._early is None
