"""The producer against a real Redis: what it enqueues, and what it refuses to."""

from __future__ import annotations

import json
import zlib

import pytest
import redis
from rq import Queue
from rq.job import Job

from zimg_queue.queue import JOB_FUNC, Producer, jittered
from zimg_queue.request import ValidationError


def queued_ids(producer: Producer, priority: str = "normal") -> list[str]:
    return producer.queue(priority).get_job_ids()


def test_enqueue_stores_a_json_job_with_timeouts_ttls_and_retry(producer: Producer, redis_conn: redis.Redis):
    job_id = producer.enqueue("a cat", width=512, height=512, seed=11)
    assert queued_ids(producer) == [job_id]
    raw = redis_conn.hget(f"rq:job:{job_id}", "data")
    func, _instance, args, _kwargs = json.loads(zlib.decompress(raw))  # RQ zlib-compresses; JSON, never pickle
    assert func == JOB_FUNC
    assert args[0] == {
        "prompt": "a cat",
        "negative_prompt": "",
        "width": 512,
        "height": 512,
        "num_inference_steps": 8,
        "guidance_scale": 0.0,
        "seed": 11,
        "output_format": "png",
    }
    job = producer.fetch(job_id)
    s = producer.settings
    assert (job.timeout, job.result_ttl, job.failure_ttl) == (s.job_timeout, s.result_ttl, s.failure_ttl)
    assert job.retries_left == s.max_retries and len(job.retry_intervals) == s.max_retries
    assert job.meta["progress"] == {"stage": "queued", "percent": 0}


def test_invalid_request_enqueues_nothing(producer: Producer):
    with pytest.raises(ValidationError, match="width"):
        producer.enqueue("a cat", width=100)
    assert queued_ids(producer) == []


def test_a_drawn_seed_is_stored_with_the_job(producer: Producer):
    job = producer.fetch(producer.enqueue("no seed given"))
    assert isinstance(job.args[0]["seed"], int)


def test_same_job_id_is_never_enqueued_twice(producer: Producer):
    """The same id and request returns the existing job; the same id for another request is a conflict (issue 13)."""
    from zimg_queue.idempotency import IdempotencyConflict

    assert producer.enqueue("a cat", job_id="order-42") == "order-42"
    assert producer.enqueue("a cat", job_id="order-42") == "order-42"
    with pytest.raises(IdempotencyConflict, match="order-42"):
        producer.enqueue("a different prompt", job_id="order-42")
    assert queued_ids(producer) == ["order-42"]
    assert producer.fetch("order-42").args[0]["prompt"] == "a cat"


@pytest.mark.parametrize("bad", ["has:colon", "has/slash", "", "x" * 129, "spa ce"])
def test_job_ids_outside_the_safe_alphabet_are_rejected(producer: Producer, bad: str):
    with pytest.raises(ValidationError, match="job_id"):
        producer.enqueue("a cat", job_id=bad)
    assert queued_ids(producer) == []


def test_priorities_are_separate_queues(producer: Producer):
    high = producer.enqueue("urgent", priority="high")
    low = producer.enqueue("whenever", priority="low")
    assert queued_ids(producer, "high") == [high] and queued_ids(producer, "low") == [low]
    with pytest.raises(ValidationError, match="priority"):
        producer.enqueue("x", priority="urgent")


def test_enqueue_many_is_one_round_trip_and_all_or_nothing(producer: Producer, redis_conn: redis.Redis):
    before = redis_conn.info("stats")["total_commands_processed"]
    ids = producer.enqueue_many([{"prompt": f"item {i}", "seed": i} for i in range(50)])
    after = redis_conn.info("stats")["total_commands_processed"]
    assert queued_ids(producer) == ids and len(set(ids)) == 50
    # One MULTI/EXEC pipeline (+ the INFO call itself): far fewer round trips than jobs.
    assert after - before < 50 * 12
    with pytest.raises(ValidationError) as exc:
        producer.enqueue_many([{"prompt": "fine"}, {"prompt": "bad", "height": 7}])
    assert exc.value.errors[0]["field"] == "[1].height"
    assert len(queued_ids(producer)) == 50


def test_enqueue_many_skips_ids_that_already_exist(producer: Producer):
    first = producer.enqueue_many(["a", "b"], job_ids=["camp-a", "camp-b"])
    again = producer.enqueue_many(["a", "b", "c"], job_ids=["camp-a", "camp-b", "camp-c"])
    assert first == ["camp-a", "camp-b"] and again == ["camp-a", "camp-b", "camp-c"]
    assert sorted(queued_ids(producer)) == ["camp-a", "camp-b", "camp-c"]


def test_status_of_a_queued_job_has_position_and_request(producer: Producer):
    ids = [producer.enqueue(f"p{i}") for i in range(3)]
    status = producer.status(ids[2])
    assert status["status"] == "queued" and status["position"] == 2
    assert status["request"]["prompt"] == "p2" and status["result"] is None
    assert status["created_at"].endswith("Z")


def test_cancel_a_queued_job_removes_it_from_the_queue(producer: Producer):
    job_id = producer.enqueue("never mind")
    assert producer.cancel(job_id)["status"] == "canceled"
    assert queued_ids(producer) == []


def test_wait_times_out_on_a_job_nobody_runs(producer: Producer):
    status = producer.wait(producer.enqueue("no workers"), timeout=1)
    assert status["status"] == "queued"


def test_jitter_stays_within_a_quarter():
    for base, got in zip([1, 4, 16], jittered([1, 4, 16]), strict=True):
        assert 0.75 * base <= got <= 1.25 * base


def test_producer_uses_the_json_serializer_queue_everywhere(producer: Producer):
    job_id = producer.enqueue("serializer")
    assert Queue("zimg-normal", connection=producer.connection, serializer=producer.serializer).job_ids == [job_id]
    assert Job.fetch(job_id, connection=producer.connection, serializer=producer.serializer).id == job_id
