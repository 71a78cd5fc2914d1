"""What a job's status says: its place in line across the priority queues, and a wait that ran out (issue 13.7)."""

from __future__ import annotations

import time

from zimg_queue.queue import Producer


def _enqueue(producer: Producer, priority: str, n: int) -> list[str]:
    return [producer.enqueue(f"{priority} {i}", width=64, height=64, priority=priority) for i in range(n)]


def test_position_counts_every_job_that_starts_first_across_priorities(producer: Producer):
    high, normal, low = _enqueue(producer, "high", 3), _enqueue(producer, "normal", 5), _enqueue(producer, "low", 2)
    assert [producer.status(j)["position"] for j in high] == [0, 1, 2]
    assert [producer.status(j)["position"] for j in normal] == [3, 4, 5, 6, 7]
    assert [producer.status(j)["position"] for j in low] == [8, 9]  # not 0 and 1: eight jobs start before
    producer.cancel(high[0])
    assert producer.status(low[0])["position"] == 7


def test_a_low_job_behind_many_normal_ones_is_not_first(producer: Producer):
    producer.enqueue_many([{"prompt": f"n{i}", "width": 64, "height": 64} for i in range(298)])
    low = producer.enqueue("behind them", width=64, height=64, priority="low")
    assert producer.status(low)["position"] == 298


def test_wait_that_runs_out_says_so(producer: Producer):
    job_id = producer.enqueue("nobody works", width=64, height=64)
    started = time.monotonic()
    status = producer.wait(job_id, timeout=1)
    assert status["status"] == "queued" and status["timed_out"] is True
    assert time.monotonic() - started >= 0.9
    producer.cancel(job_id)
    final = producer.wait(job_id, timeout=5)
    assert final["status"] == "canceled" and final["timed_out"] is False
    assert "timed_out" not in producer.status(job_id)  # only a wait can run out


def test_http_wait_says_when_it_ran_out(web_app, producer: Producer):
    job_id = producer.enqueue("x", width=64, height=64)
    client = web_app().test_client()
    assert client.get(f"/v1/jobs/{job_id}?wait=1").json["timed_out"] is True
    assert "timed_out" not in client.get(f"/v1/jobs/{job_id}").json
    client.delete(f"/v1/jobs/{job_id}")
    assert client.get(f"/v1/jobs/{job_id}?wait=1").json["timed_out"] is False


def test_a_waiting_client_reads_the_status_in_the_trip_that_wakes_it(producer: Producer, redis_conn):
    """Issue 14 point 8: between the worker's result and the waiting client's answer, no extra round trip.

    The wait blocks on the job's result stream and reads the job's hash in the same pipeline (Redis runs
    the read the moment the blocking one returns), so the wake-up brings everything the status needs.
    """
    import threading

    from rq.job import JobStatus

    from tests.conftest import round_trips

    job_id = producer.enqueue("waited on", width=64, height=64)
    done: dict = {}
    ready = threading.Event()

    def wait() -> None:
        with round_trips(thread=threading.get_ident()) as trips:
            ready.set()
            done["status"] = producer.wait(job_id, timeout=10)
        done["trips"] = trips

    waiter = threading.Thread(target=wait)
    waiter.start()
    ready.wait(5)
    time.sleep(0.3)  # the waiter is blocked on the result stream by now
    job = producer.fetch(job_id)  # the job ends as a worker would end it: status and result in one transaction
    with redis_conn.pipeline() as pipe:
        job.set_status(JobStatus.FINISHED, pipeline=pipe)
        job._result = {"path": "/tmp/x.png"}
        job._handle_success(60, pipeline=pipe)
        pipe.execute()
    waiter.join(10)
    assert done["status"]["status"] == "finished" and done["status"]["result"] == {"path": "/tmp/x.png"}
    first, *rest = done["trips"]
    assert first == ("HGETALL",)  # the job, once
    assert rest and all(set(trip) == {"XREAD", "HGETALL"} for trip in rest), rest
