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
