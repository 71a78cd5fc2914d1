"""The autoscaler's numbers: jobs waiting, workers ready, estimated wait, in /v1/queues and /metrics."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

import redis
from rq.job import Job
from rq.registry import FinishedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import Worker

from zimg_queue.capacity import estimate
from zimg_queue.metrics import record_job
from zimg_queue.queue import Producer
from zimg_queue.settings import Settings


def _finished(conn: redis.Redis, queue: str, seconds: float) -> None:
    """A job RQ's way: saved with its start and end, then in the queue's finished registry."""
    job = Job.create("workers.job.generate", args=[{}], connection=conn, serializer=JSONSerializer, origin=queue)
    job.started_at = datetime.now(timezone.utc) - timedelta(seconds=seconds + 1)
    job.ended_at = job.started_at + timedelta(seconds=seconds)
    job.save()
    FinishedJobRegistry(queue, connection=conn, serializer=JSONSerializer).add(job, 600)


def _worker(conn: redis.Redis, settings: Settings, state: str) -> Worker:
    worker = Worker(settings.queue_names, connection=conn, serializer=JSONSerializer)
    worker.register_birth()
    worker.set_state(state)
    return worker


def _metric(text: str, name: str, queue: str) -> float:
    found = re.search(rf'^{name}\{{queue="{queue}"\}} (\S+)$', text, re.MULTILINE)
    assert found, f"{name} for {queue} not in /metrics"
    return float(found.group(1))


def test_wait_is_the_work_ahead_over_the_ready_workers(redis_conn, settings: Settings, producer: Producer, web_app):
    high, normal, low = settings.queue_names
    producer.enqueue("a poster", priority="high")
    for i in range(5):
        producer.enqueue(f"a poster {i}")
    _finished(redis_conn, normal, 2.0)
    _finished(redis_conn, normal, 4.0)  # normal's recent mean: 3 s
    record_job(redis_conn, high, ok=True, duration_s=6.0)  # no finished high job: the all-time mean, 6 s
    workers = [_worker(redis_conn, settings, s) for s in ("idle", "busy", "suspended")]

    caps = {c.queue: c for c in estimate(redis_conn, settings.queue_names)}
    assert (caps[high].waiting, caps[normal].waiting, caps[low].waiting) == (1, 5, 0)
    assert [caps[q].workers_ready for q in (high, normal, low)] == [2, 2, 2]  # the suspended one is not ready
    assert caps[normal].mean_job_s == 3.0 and caps[high].mean_job_s == 6.0
    assert caps[high].estimated_wait_s == 1 * 6.0 / 2
    assert caps[normal].estimated_wait_s == (1 * 6.0 + 5 * 3.0) / 2  # the high job runs first
    assert caps[low].estimated_wait_s == caps[normal].estimated_wait_s  # a new low job waits for all of them

    client = web_app().test_client()
    queues = {q["name"]: q for q in client.get("/v1/queues").get_json()["queues"]}
    assert queues[normal]["queued"] == 5 and queues[normal]["workers_ready"] == 2
    assert queues[normal]["estimated_wait_s"] == 10.5 and queues[normal]["no_workers"] is False
    text = client.get("/metrics").get_data(as_text=True)
    assert _metric(text, "zimg_queue_estimated_wait_seconds", normal) == 10.5
    assert _metric(text, "zimg_workers_ready", normal) == 2
    assert _metric(text, "zimg_job_recent_mean_seconds", normal) == 3.0

    for worker in workers:  # every worker gone: jobs wait forever, the signal to scale up from zero
        worker.register_death()
        redis_conn.delete(worker.key)
    caps = {c.queue: c for c in estimate(redis_conn, settings.queue_names)}
    assert caps[normal].workers_ready == 0 and caps[normal].estimated_wait_s == math.inf
    queues = {q["name"]: q for q in client.get("/v1/queues").get_json()["queues"]}
    assert queues[normal]["estimated_wait_s"] is None and queues[normal]["no_workers"] is True
    assert _metric(client.get("/metrics").get_data(as_text=True), "zimg_queue_estimated_wait_seconds", normal) == (
        math.inf
    )


def test_nothing_waiting_is_no_wait_and_unknown_speed_is_unknown(redis_conn, settings: Settings, producer: Producer):
    caps = estimate(redis_conn, settings.queue_names)
    assert [(c.waiting, c.workers_ready, c.mean_job_s, c.estimated_wait_s) for c in caps] == [(0, 0, None, 0.0)] * 3
    producer.enqueue("a poster")
    _worker(redis_conn, settings, "idle")
    normal = estimate(redis_conn, settings.queue_names)[1]
    assert normal.waiting == 1 and normal.workers_ready == 1 and normal.estimated_wait_s is None  # no job timed yet


def test_real_workers_give_a_real_mean(stack, producer: Producer, settings: Settings, redis_conn):
    ids = [producer.enqueue(f"a kite {i}", width=64, height=64, seed=i) for i in range(3)]
    assert all(producer.wait(j, timeout=60)["status"] == "finished" for j in ids)
    normal = estimate(redis_conn, settings.queue_names)[1]
    assert normal.workers_ready == 1 and normal.mean_job_s is not None and 0 < normal.mean_job_s < 60
    assert normal.estimated_wait_s == 0.0
