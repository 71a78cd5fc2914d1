"""Fault injection against real processes: killed workers, a killed inference server, a killed Redis,
inference faults, a full disk, and a soak of 2,000 jobs with failures and worker kills.

Every test prints what it measured (``pytest -s`` shows it).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from conftest import Processes, wait_until
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from zimg_queue.connection import connect
from zimg_queue.queue import Producer
from zimg_queue.redis_server import EmbeddedRedis, free_port
from zimg_queue.settings import Settings

#: Issue 6: a killed worker's job is queued again and finished within this many seconds.
KILL_BOUND_S = 30


def _stage(job: Job) -> str | None:
    return (job.get_meta(refresh=True).get("progress") or {}).get("stage")


def _files(settings: Settings) -> list[Path]:
    root = Path(settings.images_path)
    return sorted(root.iterdir()) if root.exists() else []


def _partials(settings: Settings) -> list[Path]:
    return [p for p in _files(settings) if p.name.endswith(".part")]


def _started_count(conn, settings: Settings) -> int:
    """Entries in the started registries, read raw (no cleanup on the way)."""
    return sum(conn.zcard(StartedJobRegistry(q, connection=conn).key) for q in settings.queue_names)


def _in_flight(producer: Producer, job_id: str) -> bool:
    return _stage(producer.fetch(job_id)) in ("waiting_for_inference", "inference")


# --- 1. crashed workers ------------------------------------------------------------------------------------


def test_killed_worker_job_is_requeued_and_finishes_within_the_bound(procs: Processes, producer, redis_conn):
    """kill -9 a worker mid-job (default 15 s lease): another worker finishes the job within 30 s, one file."""
    procs.inference(latency_a="3", latency_b="0")
    victim = procs.worker()
    job_id = producer.enqueue("killed mid-job", width=64, height=64, seed=11)
    wait_until(lambda: _in_flight(producer, job_id), timeout=30)
    victim.kill()
    killed = time.monotonic()
    procs.worker()  # a fresh worker: its start-up cleanup is too early to see the lease expire; its reaper is not
    status = producer.wait(job_id, timeout=KILL_BOUND_S + 15)
    elapsed = time.monotonic() - killed
    print(f"\nworker SIGKILL -> job finished: {elapsed:.1f} s (lease_ttl 15 s, bound {KILL_BOUND_S} s)")
    assert status["status"] == "finished", status
    assert elapsed <= KILL_BOUND_S
    assert status["attempts"][0]["error"].startswith("WorkerDied: the worker running this job died")
    assert len(status["attempts"]) == 1
    # The killed attempt's inference call was in flight: it left no partial file, and the re-run made exactly one.
    assert [p.name for p in _files(procs.settings)] == [Path(status["result"]["path"]).name]
    assert _started_count(redis_conn, procs.settings) == 0


def test_killed_worker_with_no_attempts_left_fails_saying_the_worker_died(procs: Processes, redis_conn, settings):
    producer = Producer(redis_conn, settings.with_(max_retries=0))
    procs.inference(latency_a="30", latency_b="0")
    victim = procs.worker(zimg_lease_ttl="3")
    job_id = producer.enqueue("no retries", width=64, height=64)
    wait_until(lambda: _in_flight(producer, job_id), timeout=30)
    victim.kill()
    killed = time.monotonic()
    procs.worker(zimg_lease_ttl="3")
    status = producer.wait(job_id, timeout=30)
    print(f"\nworker SIGKILL -> job failed (no retries, lease 3 s): {time.monotonic() - killed:.1f} s")
    assert status["status"] == "failed", status
    assert status["error"].startswith("WorkerDied:") and "no attempts left" in status["error"]
    assert _started_count(redis_conn, procs.settings) == 0
    assert not _files(procs.settings)


# --- 2. inference server faults ----------------------------------------------------------------------------


def test_inference_server_killed_mid_batch_and_restarted_every_job_finishes(procs: Processes, redis_conn, settings):
    producer = Producer(redis_conn, settings.with_(retry_intervals=(1.0, 2.0, 4.0)))
    server = procs.inference(latency_a="2", latency_b="0", max_wait_ms="200")
    for _ in range(3):
        procs.worker()
    ids = [producer.enqueue("mid-batch", width=64, height=64, seed=i) for i in range(6)]
    wait_until(lambda: sum(_in_flight(producer, i) for i in ids) >= 3, timeout=30)
    server.kill()
    procs.inference(latency_a="0.2", latency_b="0")  # same port
    statuses = [producer.wait(i, timeout=60) for i in ids]
    assert [s["status"] for s in statuses] == ["finished"] * 6, statuses
    retried = [s for s in statuses if s["attempts"]]
    print(f"\ninference server killed: {len(retried)} of 6 jobs retried, all finished")
    assert retried and all("InferenceUnavailable" in s["attempts"][0]["error"] for s in retried)
    assert len(_files(procs.settings)) == 6 and not _partials(procs.settings)


def test_5xx_is_retried_with_exponential_backoff_and_jitter(procs: Processes, redis_conn, settings):
    intervals = (0.5, 1.0, 4.0)
    producer = Producer(redis_conn, settings.with_(retry_intervals=intervals))
    procs.inference(latency_a="0", latency_b="0", fail_rate="1")
    procs.worker()
    job_id = producer.enqueue("always 500", width=64, height=64)
    status = producer.wait(job_id, timeout=30)
    assert status["status"] == "failed"
    attempts = status["attempts"]
    assert len(attempts) == settings.max_retries + 1
    assert all("answered 500" in a["error"] for a in attempts)
    stamps = [datetime.fromisoformat(a["at"].replace("Z", "+00:00")).timestamp() for a in attempts]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    stored = producer.fetch(job_id).retry_intervals
    print(f"\n5xx: gaps between attempts {[round(g, 2) for g in gaps]} s, jittered intervals {stored}")
    assert stored != list(intervals) and all(0.75 * b <= s <= 1.25 * b for s, b in zip(stored, intervals))
    # RQ's scheduler stores due times in whole seconds and polls once a second: each gap is its jittered
    # interval give or take a second, and the last (4 s base) is always longer than the first (0.5 s base).
    assert all(gap >= 0.75 * base - 1.0 for gap, base in zip(gaps, intervals))
    assert gaps[-1] > gaps[0] + 0.3


@pytest.mark.parametrize(
    ("sim", "worker_env", "expect"),
    [
        ({"drop_rate": "1"}, {}, "could not be reached"),  # connection cut mid-response
        ({"slow_rate": "1", "slow_s": "3"}, {"zimg_read_timeout": "0.5"}, "timed out"),
    ],
    ids=["dropped-connection", "read-timeout"],
)
def test_transient_inference_faults_are_retried_up_to_the_limit(procs: Processes, producer, sim, worker_env, expect):
    procs.inference(latency_a="0", latency_b="0", **sim)
    procs.worker(**worker_env)
    status = producer.wait(producer.enqueue("faulty", width=64, height=64), timeout=60)
    assert status["status"] == "failed"
    assert len(status["attempts"]) == procs.settings.max_retries + 1
    assert all(expect in a["error"] for a in status["attempts"]), status["attempts"]
    assert expect in status["error"] and not _files(procs.settings)


def test_transient_faults_recover_and_the_attempts_show(procs: Processes, producer):
    procs.inference(latency_a="0", latency_b="0", fail_rate="0.2", drop_rate="0.1", fault_seed="7")
    procs.worker()
    ids = [producer.enqueue("flaky", width=64, height=64, seed=i) for i in range(12)]
    statuses = [producer.wait(i, timeout=60) for i in ids]
    assert all(s["status"] == "finished" for s in statuses), [s["attempts"] for s in statuses]
    retried = [s for s in statuses if s["attempts"]]
    print(f"\nflaky server: {len(retried)} of 12 jobs needed a retry")
    assert retried and all(s["result"]["path"] for s in retried)


def test_4xx_from_the_inference_server_is_not_retried(procs: Processes, producer):
    procs.inference(latency_a="0", latency_b="0", env={"ZIMG_INFERENCE_TOKEN": "s3cret"})  # the worker sends none
    procs.worker()
    status = producer.wait(producer.enqueue("rejected", width=64, height=64), timeout=30)
    assert status["status"] == "failed"
    assert len(status["attempts"]) == 1 and "answered 401" in status["error"]


# --- 3. Redis restarts --------------------------------------------------------------------------------------


def test_redis_killed_with_jobs_queued_keeps_them_and_everyone_reconnects(tmp_path: Path, settings: Settings):
    """kill -9 a private Redis (AOF everysec) with jobs queued; restart it: every job is there and finishes."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port()).start()
    own = settings.with_(redis_url=server.url)
    procs = Processes(own, tmp_path)
    try:
        conn = connect(server.url)
        producer = Producer(conn, own)
        procs.inference(latency_a="0.25", latency_b="0")
        worker = procs.worker()
        ids = [producer.enqueue("survives redis", width=64, height=64, seed=i) for i in range(20)]
        time.sleep(1.5)  # appendfsync everysec: what was written a second ago is on disk
        before = Counter(str(producer.fetch(i).get_status().value) for i in ids)
        server.kill()
        time.sleep(3)
        assert worker.alive(), "worker crashed while Redis was down"
        server.start()
        assert all(conn.exists(Job.key_for(i)) for i in ids), "a queued job was lost"
        late = producer.enqueue("enqueued after the restart", width=64, height=64, seed=99)  # producer reconnects
        statuses = [producer.wait(i, timeout=60) for i in [*ids, late]]
        print(f"\nRedis SIGKILL with {dict(before)}: after restart {Counter(s['status'] for s in statuses)}")
        assert all(s["status"] == "finished" for s in statuses), statuses
        assert worker.alive() and "quitting" not in worker.output()
        assert _started_count(conn, own) == 0 and not _partials(own)
    finally:
        procs.stop_all()
        server.stop()


# --- 4. exactly one file per request, and a full disk ------------------------------------------------------


def test_the_same_request_from_many_workers_makes_exactly_one_file(procs: Processes, producer):
    procs.inference(latency_a="0.3", latency_b="0")
    for _ in range(3):
        procs.worker()
    ids = [producer.enqueue("same", width=64, height=64, seed=5) for _ in range(6)]
    statuses = [producer.wait(i, timeout=30) for i in ids]
    assert {s["status"] for s in statuses} == {"finished"}
    assert len({s["result"]["path"] for s in statuses}) == 1 and len({s["result"]["sha256"] for s in statuses}) == 1
    assert len(_files(procs.settings)) == 1  # concurrent misses race to one name; os.replace keeps one file
    again = producer.wait(producer.enqueue("same", width=64, height=64, seed=5), timeout=30)
    assert again["result"]["cache_hit"] is True


def test_disk_full_fails_the_job_clearly_and_leaves_no_partial_file(procs: Processes, redis_conn, monkeypatch):
    """``ENOSPC`` while writing the image: the job retries, then fails naming the error; no file at all."""
    from workers import job as job_module
    from workers import storage
    from workers.worker import ZimgWorker

    procs.inference(latency_a="0", latency_b="0")
    settings = procs.settings
    for key, value in procs.env().items():
        if key.startswith("ZIMG_"):
            monkeypatch.setenv(key, value)
    job_module.context.cache_clear()
    written: list[str] = []

    def full_disk(fd: int) -> None:
        written.extend(p.name for p in Path(settings.images_path).glob("*.part"))  # the temp file was there...
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", full_disk)
    producer = Producer(redis_conn, settings)
    job_id = producer.enqueue("disk full", width=64, height=64)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ZimgWorker(settings.queue_names, connection=redis_conn).work(burst=True)
    finally:
        job_module.context.cache_clear()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    status = producer.status(job_id)
    assert status["status"] == "failed"
    assert "No space left on device" in status["error"]
    assert len(status["attempts"]) == settings.max_retries + 1
    assert written and not _files(settings)  # ...and is gone


# --- 7(d). soak ------------------------------------------------------------------------------------------------


SOAK_JOBS = 2000


def _kill_busy_child(conn, pool) -> int:
    """SIGKILL one of ``pool``'s worker processes while RQ says it is running a job; returns its pid."""

    def busy_child() -> int | None:
        for key in conn.scan_iter("rq:worker:*"):
            pid, state = conn.hmget(key, "pid", "state")
            if pid and int(pid) != pool.pid and state == b"busy":
                return int(pid)
        return None

    pid = wait_until(busy_child, timeout=30, interval=0.01)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_soak_2000_jobs_4_workers_5_percent_failures_two_kills(procs: Processes, redis_conn, settings):
    t0 = time.monotonic()
    own = settings.with_(retry_intervals=(0.1, 0.2, 0.4))
    producer = Producer(redis_conn, own)
    procs.inference(latency_a="0", latency_b="0", fail_rate="0.05", drop_rate="0.01", fault_seed="1")
    pool = procs.worker(processes=4, zimg_lease_ttl="3")  # the Procfile's `zimg worker --processes 4`
    requests = [{"prompt": f"soak {i}", "width": 64, "height": 64, "seed": i} for i in range(SOAK_JOBS)]
    ids = producer.enqueue_many(requests)
    finished_key = lambda: sum(  # noqa: E731
        redis_conn.zcard(f"rq:{kind}:{q}") for kind in ("finished", "failed") for q in own.queue_names
    )
    killed = []
    for at in (SOAK_JOBS // 4, SOAK_JOBS // 2):  # RQ's WorkerPool starts a new process for each one killed
        wait_until(lambda at=at: finished_key() >= at, timeout=120, interval=0.1)
        killed.append(_kill_busy_child(redis_conn, pool))
    wait_until(lambda: finished_key() >= SOAK_JOBS, timeout=150, interval=0.2)
    wall = time.monotonic() - t0

    jobs = Job.fetch_many(ids, connection=redis_conn, serializer=JSONSerializer)
    counts = Counter(str(job.get_status(refresh=False).value) for job in jobs)
    failed = [producer.status(job.id) for job in jobs if job.get_status(refresh=False) == "failed"]
    retried = sum(1 for job in jobs if job.meta.get("attempts"))
    died = sum(1 for job in jobs for a in job.meta.get("attempts", []) if a["error"].startswith("WorkerDied"))
    print(
        f"\nsoak: {SOAK_JOBS} jobs in {wall:.1f} s wall ({SOAK_JOBS / wall:.0f} jobs/s), {dict(counts)}; "
        f"{retried} retried, {died} worker deaths recorded; failed: {[f['error'] for f in failed][:5]}"
    )
    assert counts["finished"] + counts["failed"] == SOAK_JOBS == len(jobs)
    assert all(f["error"] and f["attempts"] for f in failed)
    assert not _partials(own)
    assert len(_files(own)) == counts["finished"]  # one file per finished request, no extras
    assert _started_count(redis_conn, own) == 0
    assert retried > 0.03 * SOAK_JOBS and died >= 1 and len(set(killed)) == 2 and pool.alive()
