"""rq-dashboard 0.9 on our JSON-serialized jobs, under the API token, with the pinned rq major version.

This is the evidence for pinning rq 2.x: the dashboard's pages and JSON endpoints answer
for our queues, workers and jobs, and the job detail shows the request and progress meta.
"""

from __future__ import annotations

import json

import requests
import rq

from zimg_queue.queue import Producer

TOKEN = "dash-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_rq_is_the_pinned_major_version():
    assert rq.__version__.split(".")[0] == "2", rq.__version__


def test_dashboard_pages_and_json_answer_for_our_queues_under_auth(stack, web, producer: Producer):
    server = web(ZIMG_API_TOKEN=TOKEN)
    base = f"{server.url}/rq"
    done = producer.wait(producer.enqueue("a lighthouse at dusk", width=64, height=64, seed=11), timeout=30)
    assert done["status"] == "finished"
    queued = producer.enqueue("runs too", width=64, height=64, priority="low", job_id="keyed-job")
    worker = next(p for p in stack.started if "worker" in p.args)
    producer.wait(queued, timeout=30)
    worker.stop()  # no worker now: the next job stays queued
    waiting_id = producer.enqueue("still waiting", width=64, height=64, priority="low")

    def get(path: str, **kw) -> requests.Response:
        return requests.get(f"{base}{path}", headers=AUTH, timeout=10, **kw)

    for path in ("/", "/0/view/queues", "/0/view/workers", "/0/view/jobs", f"/0/view/job/{done['id']}"):
        assert requests.get(f"{base}{path}", timeout=10).status_code == 401, path
        page = get(path)
        assert page.status_code == 200 and "text/html" in page.headers["Content-Type"], path
    assert "rq_dashboard" in get("/").text or "RQ" in get("/").text

    queues = {q["name"]: q for q in get("/0/data/queues.json").json()["queues"]}
    assert queues["zimg-normal"]["finished_job_registry_count"] == 1
    assert queues["zimg-low"]["count"] == 1 and queues["zimg-low"]["finished_job_registry_count"] == 1

    finished = get("/0/data/jobs/zimg-normal/finished/8/asc/1.json").json()
    assert [j["id"] for j in finished["jobs"]] == [done["id"]]
    waiting = get("/0/data/jobs/zimg-low/queued/8/asc/1.json").json()
    assert [j["id"] for j in waiting["jobs"]] == [waiting_id]

    detail = get(f"/0/data/job/{done['id']}.json").json()
    assert detail["status"] == "finished" and detail["origin"] == "zimg-normal"
    assert "a lighthouse at dusk" in detail["description"] and "workers.job.generate" in detail["description"]
    meta = json.loads(detail["metadata"])
    assert meta["progress"] == {"stage": "done", "percent": 100}
    assert detail["result"]["path"] == done["result"]["path"]
    assert requests.get(f"{base}/0/data/job/{done['id']}.json", timeout=10).status_code == 401


def test_dashboard_lists_a_running_worker(stack, web):
    server = web(ZIMG_API_TOKEN=TOKEN)
    workers = requests.get(f"{server.url}/rq/0/data/workers.json", headers=AUTH, timeout=10).json()["workers"]
    assert len(workers) == 1
    assert workers[0]["queues"] == ["zimg-high", "zimg-normal", "zimg-low"]


# --- the dashboard's actions (issue 12, points 4 and 6) ------------------------------------------------------


def _failed(producer: Producer, prompt: str = "to requeue") -> str:
    """A job in our failed registry, as a worker would leave it."""
    from rq.job import JobStatus

    job_id = producer.enqueue(prompt, width=64, height=64)
    job = producer.fetch(job_id)
    queue = producer.queue("normal")
    queue.remove(job)
    job.set_status(JobStatus.FAILED)
    queue.failed_job_registry.add(job, ttl=600, exc_string="RuntimeError: boom")
    return job_id


def test_dashboard_actions_on_missing_or_foreign_jobs_are_4xx(web_app, producer: Producer, redis_conn):
    client = web_app().test_client()
    assert client.post("/rq/job/no-such-job/requeue").status_code == 404
    assert client.post("/rq/job/no-such-job/delete").status_code == 404
    # Another app on the same Redis: a pickled job, and a JSON job on its own queue.
    planted = {"data": b"\x80\x04\x95garbage", "status": "failed", "origin": "zimg-normal"}
    redis_conn.hset("rq:job:pickled", mapping={**planted, "created_at": "2026-01-01T00:00:00.000000Z"})
    other = producer.queue("normal")
    from rq import Queue

    theirs = Queue("their-app", connection=redis_conn, serializer=other.serializer).enqueue_call("os.getcwd")
    for job_id in ("pickled", theirs.id):
        for action in ("requeue", "delete"):
            r = client.post(f"/rq/job/{job_id}/{action}")
            assert r.status_code == 409 and r.json["error"] == "foreign_job", (job_id, action, r.json)
    assert redis_conn.exists("rq:job:pickled") and redis_conn.exists(f"rq:job:{theirs.id}")  # left alone
    queued = producer.enqueue("still queued", width=64, height=64)
    r = client.post(f"/rq/job/{queued}/requeue")
    assert r.status_code == 409 and r.json["error"] == "not_failed"
    assert client.post("/rq/queue/their-app/compact").status_code == 404
    assert client.post("/rq/queue/zimg-normal/nonsense/empty").status_code == 404


def test_compact_and_empty_of_an_empty_queue_are_no_ops_not_errors(web_app, redis_conn):
    client = web_app().test_client()
    assert client.post("/rq/queue/zimg-low/compact").json == {"status": "OK"}
    redis_conn.zadd("rq:wip:zimg-low", {"dangling-id": 1})  # an id whose job hash is gone
    redis_conn.zadd("rq:failed:zimg-low", {"dangling-id": 9e9})
    for registry in ("queued", "failed", "started", "finished", "deferred", "scheduled", "canceled"):
        assert client.post(f"/rq/queue/zimg-low/{registry}/empty").json == {"status": "OK"}, registry
    assert redis_conn.zcard("rq:failed:zimg-low") == 0


def test_no_get_changes_state_and_post_requeues(web_app, producer: Producer):
    client = web_app().test_client()
    job_id = _failed(producer)
    for path in ("/rq/requeue/zimg-normal", f"/rq/job/{job_id}/requeue", "/rq/queue/zimg-normal/failed/empty"):
        r = client.get(path)
        assert r.status_code == 405 and "POST" in r.headers["Allow"] and "GET" not in r.headers["Allow"], path
    assert producer.status(job_id)["status"] == "failed"
    r = client.post("/rq/requeue/zimg-normal")
    assert r.status_code == 200 and r.json == {"status": "OK", "count": 1}
    assert producer.status(job_id)["status"] == "queued"
    other = _failed(producer, "another")
    assert client.post(f"/rq/job/{other}/requeue").json == {"status": "OK"}
    assert producer.status(other)["status"] == "queued"
    assert client.post(f"/rq/job/{other}/delete").json == {"status": "OK"}
    assert not producer.connection.exists(f"rq:job:{other}")
