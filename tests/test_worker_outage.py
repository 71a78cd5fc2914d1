"""Inference outages are waited out, not failed (:mod:`workers.outage`): real workers, a real sim server."""

from __future__ import annotations

import json
import time
from collections import Counter

from conftest import Processes, wait_until
from rq.job import Job
from rq.serializers import JSONSerializer

from workers.errors import InferenceDown
from workers.outage import Breaker, outage_key
from zimg_queue.queue import Producer
from zimg_queue.settings import Settings

OUTAGE_S = 30
BACKLOG = 200


def _bounces(*workers) -> int:
    """Executions that ended by going back to the queue to wait for the inference server (the workers' log)."""
    n = 0
    for proc in workers:
        for line in proc.output().splitlines():
            if line.startswith("{") and '"job_finished"' in line:
                record = json.loads(line)
                n += record.get("status") == "queued"
    return n


def test_a_30_s_outage_with_200_queued_jobs_fails_none(procs: Processes, producer: Producer, redis_conn):
    """Shipped defaults (budget 600 s, retries 1/4/16 s, which an outage used to exhaust in 21 s)."""
    key = outage_key(producer.settings.inference_url)
    workers = [procs.worker(), procs.worker()]
    ids = producer.enqueue_many([{"prompt": f"backlog {i}", "width": 64, "height": 64} for i in range(BACKLOG)])
    started = time.monotonic()
    wait_until(lambda: redis_conn.exists(key), timeout=30)  # a worker noticed, for everyone
    waiting = wait_until(
        lambda: [i for i in ids[:5] if producer.status(i)["progress"].get("stage") == "waiting_for_inference_server"]
    )
    counts: Counter = Counter()
    while time.monotonic() - started < OUTAGE_S:
        jobs = Job.fetch_many(ids, connection=redis_conn, serializer=JSONSerializer)
        counts = Counter(str(job.get_status(refresh=False).value) for job in jobs if job)  # type: ignore[union-attr]
        assert counts["failed"] == 0, counts
        time.sleep(1)
    during = _bounces(*workers)
    procs.inference(latency_a="0.02", latency_b="0.005", max_wait_ms="20")
    back = time.monotonic()
    wait_until(lambda: sum(redis_conn.zcard(f"rq:finished:{q}") for q in producer.settings.queue_names) >= BACKLOG,
               timeout=120, interval=0.2)  # fmt: skip
    drained = time.monotonic() - back
    statuses = [producer.status(i) for i in ids]
    print(
        f"\n{OUTAGE_S} s outage, {BACKLOG} jobs queued, 2 workers: during the outage {dict(counts)}, "
        f"{during} trial executions went back to the queue; all {BACKLOG} finished {drained:.1f} s after the "
        f"server came back; {len(waiting)} of the first 5 said they waited for it"
    )
    assert all(s["status"] == "finished" for s in statuses), Counter(s["status"] for s in statuses)
    assert all(s["attempts"] == [] for s in statuses), "an outage must not spend a job's retries"
    # No herd: during the outage the workers tried the server a few times in all, not once per job.
    assert 1 <= during < BACKLOG // 4
    assert not redis_conn.exists(key)


def test_past_the_outage_budget_jobs_fail_saying_how_long_it_was_down(procs: Processes, producer: Producer):
    """Changed setting: ``ZIMG_OUTAGE_BUDGET=3`` (the default, 600 s, is the 30 s outage test's)."""
    procs.worker(zimg_outage_budget="3")  # no inference server is listening on settings.inference_url
    t0 = time.monotonic()
    ids = [producer.enqueue("nobody home", width=64, height=64, seed=i) for i in range(3)]
    statuses = [producer.wait(i, timeout=60) for i in ids]
    print(f"\nno inference server, budget 3 s: 3 jobs failed after {time.monotonic() - t0:.1f} s")
    for status in statuses:
        assert status["status"] == "failed", status
        assert "the inference server was down for" in status["error"], status["error"]
        assert "ZIMG_OUTAGE_BUDGET=3 s" in status["error"] and "could not be reached" in status["error"]
        assert len(status["attempts"]) == 1  # the outage spent no retries; its verdict is the one attempt
    procs.inference(latency_a="0", latency_b="0")
    assert producer.wait(producer.enqueue("back", width=64, height=64), timeout=30)["status"] == "finished"


def test_the_breaker_is_shared_one_trial_at_a_time_and_closed_by_a_success(redis_conn, settings: Settings):
    url = settings.inference_url
    a, b = Breaker(redis_conn, settings.outage_budget, url), Breaker(redis_conn, settings.outage_budget, url)
    other = Breaker(redis_conn, settings.outage_budget, "http://10.0.0.9:7860")  # another server's workers
    assert a.state() is None and a.wait_turn() == "closed"
    first = a.trip(InferenceDown("could not be reached", retry_after=None))
    again = b.trip(InferenceDown("could not be reached", retry_after=1.5))
    assert again.down_since == first.down_since  # the outage began at the first trip
    assert again.probe_at >= time.time() + 1.0  # the server's Retry-After is honoured
    assert other.state() is None  # they are not held back by this outage
    redis_conn.hset(a.key, "probe_at", time.time())  # the pause is over
    assert a.wait_turn() == "trial"
    assert redis_conn.exists(a.trial_key) and not redis_conn.set(b.trial_key, "x", nx=True)  # b would wait
    a.close()
    assert b.state() is None and b.wait_turn() == "closed"
    over = Breaker(redis_conn, 0.0)
    over.trip(InferenceDown("could not be reached"))
    assert over.wait_turn() == "over_budget"
