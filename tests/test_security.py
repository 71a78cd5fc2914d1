"""Security properties that are cheap to prove: no pickle from Redis, loopback by default."""

from __future__ import annotations

import json
import os
import pickle
import signal
import zlib
from pathlib import Path

import pytest
import redis

from zimg_queue.cli import build_parser
from zimg_queue.queue import Producer
from zimg_queue.redis_server import EmbeddedRedis


def test_jobs_are_stored_as_json_never_pickle(producer: Producer, redis_conn: redis.Redis):
    job_id = producer.enqueue("json only", width=64, height=64, seed=3)
    raw = redis_conn.hget(f"rq:job:{job_id}", "data")
    assert raw is not None
    data = zlib.decompress(raw)
    assert not data.startswith(b"\x80"), "pickle protocol header"
    func, _instance, args, _kwargs = json.loads(data)
    assert func == "workers.job.generate" and args[0]["prompt"] == "json only"


class _Evil:
    """Unpickling this runs ``os.mkdir(path)``: the proof that a payload was unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_a_pickled_payload_planted_in_redis_is_never_unpickled(producer: Producer, redis_conn, tmp_path: Path):
    """Someone with Redis access plants a pickle in a job: the JSON worker fails the job and runs nothing."""
    from workers.worker import ZimgWorker

    marker = tmp_path / "pwned"
    job_id = producer.enqueue("victim", width=64, height=64)
    redis_conn.hset(f"rq:job:{job_id}", "data", zlib.compress(pickle.dumps(_Evil(str(marker)))))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ZimgWorker(producer.settings.queue_names, connection=redis_conn).work(burst=True)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert not marker.exists(), "the worker unpickled data from Redis"
    # The attempt failed (on the shipped retry policy it is scheduled to run again, and fails the same way).
    assert producer.fetch(job_id).get_status() in ("failed", "scheduled")


def test_servers_bind_to_loopback_by_default(tmp_path: Path):
    parser = build_parser()
    assert parser.parse_args(["inference-server"]).host == "127.0.0.1"
    assert parser.parse_args(["web"]).host == "127.0.0.1"
    command = EmbeddedRedis(tmp_path).command()
    assert command[command.index("--bind") + 1] == "127.0.0.1"
    assert command[command.index("--protected-mode") + 1] == "yes"


# --- cross-site request forgery (issue 12, point 6) -----------------------------------------------------------

CSRF_TOKEN = "csrf-token-0123456789"
BASIC = {"Authorization": "Basic " + __import__("base64").b64encode(f"ops:{CSRF_TOKEN}".encode()).decode()}
BEARER = {"Authorization": f"Bearer {CSRF_TOKEN}"}
JOB = {"prompt": "a cat", "width": 64, "height": 64}


def _jobs(redis_conn: redis.Redis) -> int:
    return sum(1 for _ in redis_conn.scan_iter("rq:job:*"))


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (json.dumps(JOB), "text/plain"),  # what a cross-site <form enctype="text/plain"> or fetch(no-cors) sends
        ("prompt=a+cat&width=64", "application/x-www-form-urlencoded"),
        (json.dumps(JOB), "multipart/form-data; boundary=x"),
        (json.dumps(JOB), None),
    ],
)
def test_post_jobs_needs_a_json_content_type(web_app, redis_conn, data, content_type):
    client = web_app().test_client()
    r = client.post("/v1/jobs", data=data, content_type=content_type)
    assert r.status_code == 415, r.json
    assert r.json["errors"][0]["field"] == "Content-Type" and "application/json" in r.json["message"]
    assert _jobs(redis_conn) == 0
    ok = client.post("/v1/jobs", data=json.dumps(JOB), content_type="application/json; charset=utf-8")
    assert ok.status_code == 202


@pytest.mark.parametrize(
    "origin",
    [
        {"Origin": "http://evil.example"},
        {"Referer": "http://evil.example/page"},
        {"Origin": "null"},
        {"Origin": "http://localhost:8080"},
        {"Origin": "https://localhost"},
    ],  # fmt: skip
)
def test_a_foreign_site_cannot_act_with_the_browsers_basic_login(web_app, redis_conn, origin):
    client = web_app(ZIMG_API_TOKEN=CSRF_TOKEN).test_client()
    r = client.post("/v1/jobs", json=JOB, headers={**BASIC, **origin})
    assert r.status_code == 403 and r.json["error"] == "forbidden_origin"
    for path in ("/rq/queue/zimg-normal/failed/empty", "/rq/requeue/zimg-normal", "/rq/queue/zimg-normal/compact"):
        assert client.post(path, headers={**BASIC, **origin}).status_code == 403, path
    r = client.delete("/v1/jobs/abc", headers={**BASIC, **origin})
    assert r.status_code == 403
    assert _jobs(redis_conn) == 0
    assert client.get("/v1/queues", headers={**BASIC, **origin}).status_code == 200  # reading is not acting


def test_same_site_browsers_and_programs_with_a_bearer_token_may_act(web_app, redis_conn):
    client = web_app(ZIMG_API_TOKEN=CSRF_TOKEN).test_client()
    assert client.post("/v1/jobs", json=JOB, headers={**BASIC, "Origin": "http://localhost"}).status_code == 202
    assert client.post("/v1/jobs", json=JOB, headers={**BASIC, "Referer": "http://localhost/rq/"}).status_code == 202
    assert client.post("/v1/jobs", json=JOB, headers=BASIC).status_code == 202  # no Origin: not a cross-site page
    assert client.post("/v1/jobs", json=JOB, headers={**BEARER, "Origin": "http://evil.example"}).status_code == 202
    assert client.post("/rq/queue/zimg-normal/compact", headers={**BASIC, "Origin": "http://localhost"}).json == {
        "status": "OK"
    }
    assert _jobs(redis_conn) == 4


def test_without_a_token_a_foreign_site_still_cannot_act(web_app, redis_conn):
    """No credentials at all (loopback default): a page on another site must not drive the local service."""
    client = web_app().test_client()
    assert client.post("/v1/jobs", json=JOB, headers={"Origin": "http://evil.example"}).status_code == 403
    foreign = {"Origin": "http://evil.example"}
    assert client.post("/rq/queue/zimg-normal/queued/empty", headers=foreign).status_code == 403
    assert _jobs(redis_conn) == 0
