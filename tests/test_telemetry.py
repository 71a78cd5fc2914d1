"""The web API's request ids, access log and HTTP metrics (zimg_queue.web.telemetry)."""

from __future__ import annotations

import io
import json
import uuid

import pytest
import redis
import requests

from tests.conftest import wait_until
from tests.test_metrics import samples
from zimg_queue.logs import configure_logging
from zimg_queue.metrics import HttpRecorder, exposition
from zimg_queue.redis_server import free_port
from zimg_queue.settings import Settings


@pytest.fixture
def access_log():
    out = io.StringIO()
    configure_logging(Settings(), process="web", stream=out)
    yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    configure_logging(Settings(), process="cli")


def test_a_request_id_is_made_echoed_and_stored_with_the_job(web_app, producer):
    client = web_app().test_client()
    resp = client.post("/v1/jobs", json={"prompt": "a cat", "width": 64, "height": 64})
    assert resp.status_code == 202
    rid = resp.headers["X-Request-Id"]
    assert len(rid) == 32
    assert producer.fetch(resp.get_json()["id"]).meta["request_id"] == rid
    assert client.get("/healthz").headers["X-Request-Id"] != rid  # one per request


def test_a_clients_request_id_is_kept_and_a_malformed_one_replaced(web_app, producer):
    client = web_app().test_client()
    resp = client.post("/v1/jobs", json={"prompt": "a cat"}, headers={"X-Request-Id": "abc-123.4:5_6"})
    assert resp.headers["X-Request-Id"] == "abc-123.4:5_6"
    assert producer.fetch(resp.get_json()["id"]).meta["request_id"] == "abc-123.4:5_6"
    for bad in ("a b", "x" * 129, "<script>", "id\u00e9"):
        got = client.get("/v1/queues", headers={"X-Request-Id": bad}).headers["X-Request-Id"]
        assert got != bad and len(got) == 32


def test_access_log_has_route_status_and_id_but_never_the_token(web_app, access_log):
    client = web_app(ZIMG_API_TOKEN="s3cret-token").test_client()
    client.get("/v1/jobs/nope?wait=0", headers={"Authorization": "Bearer s3cret-token", "X-Request-Id": "r1"})
    client.get("/v1/queues", headers={"Authorization": "Basic dTpzM2NyZXQtdG9rZW4="})  # u:s3cret-token
    client.get("/v1/queues", headers={"Authorization": "Bearer wrong-guess"})
    client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})  # a scrape's success: debug level
    client.get("/healthz")  # 503 here (no inference server, no worker): a failing probe is logged
    lines = [line for line in access_log() if line["event"] == "http_request"]
    assert [(line["route"], line["status"]) for line in lines] == [
        ("/v1/jobs/<job_id>", 404), ("/v1/queues", 200), ("/v1/queues", 401), ("/healthz", 503),
    ]  # fmt: skip
    assert lines[0]["request_id"] == "r1" and lines[0]["path"] == "/v1/jobs/nope" and lines[0]["process"] == "web"
    text = json.dumps(access_log())
    for secret in ("s3cret-token", "dTpzM2NyZXQtdG9rZW4=", "wrong-guess", "Authorization", "wait=0"):
        assert secret not in text


def own_db(settings, db: int) -> str:
    """The session Redis, another database: other tests' apps flush their last second of HTTP counts to db 0."""
    return f"{settings.redis_url.rsplit('/', 1)[0]}/{db}"


def test_http_metrics_are_per_route_and_status(web_app, redis_conn, settings):
    client = web_app(ZIMG_REDIS_URL=own_db(settings, 3)).test_client()
    for _ in range(3):
        client.get("/v1/jobs/nope")
    client.get("/v1/jobs/also-nope")
    client.post("/v1/jobs", json={"prompt": "a cat"})
    client.post("/v1/jobs", json={"prompt": ""})
    client.get("/no/such/page")
    client.open("/no/such/page", method="BREW")  # any token is a method: it must not become a label value
    m = samples(client.get("/metrics").get_data(as_text=True))  # a scrape sees this process's requests at once

    def count(method: str, route: str, status: str) -> float:
        labels = (("method", method), ("route", route), ("status", status))
        return m[("zimg_http_request_duration_seconds_count", labels)]

    assert count("GET", "/v1/jobs/<job_id>", "404") == 4  # the URL rule, not four raw paths
    assert count("POST", "/v1/jobs", "202") == 1
    assert count("POST", "/v1/jobs", "400") == 1
    assert count("GET", "unmatched", "404") == 1
    assert count("other", "unmatched", "404") == 1
    key = ("zimg_http_request_duration_seconds_bucket",
           (("le", "+Inf"), ("method", "GET"), ("route", "/v1/jobs/<job_id>"), ("status", "404")))  # fmt: skip
    assert m[key] == 4
    assert not any("nope" in str(labels) for _, labels in m)


def json_lines(proc) -> list[dict]:
    out = []
    for raw in proc.output().splitlines():
        try:
            out.append(json.loads(raw))
        except json.JSONDecodeError:
            pytest.fail(f"{proc.args[3]}: a log line that is not JSON: {raw!r}")
    return out


def test_one_request_id_follows_a_job_through_every_process(procs, web):
    """web API -> job meta -> worker -> inference server (logged beside its batch id), all real processes."""
    inference = procs.inference(latency_a="0", latency_b="0")
    worker = procs.worker()
    api = web()
    rid = f"trace-{uuid.uuid4().hex[:12]}"
    body = {"prompt": "a tracer bullet", "width": 64, "height": 64}
    resp = requests.post(f"{api.url}/v1/jobs", json=body, headers={"X-Request-Id": rid}, timeout=10)
    assert resp.status_code == 202 and resp.headers["X-Request-Id"] == rid
    job_id = resp.json()["id"]
    assert requests.get(f"{api.url}/v1/jobs/{job_id}?wait=30", timeout=40).json()["status"] == "finished"

    access = wait_until(lambda: [x for x in json_lines(api) if x.get("request_id") == rid])
    assert access[0]["event"] == "http_request" and access[0]["route"] == "/v1/jobs" and access[0]["status"] == 202
    assert access[0]["process"] == "web"
    batches = wait_until(lambda: [x for x in json_lines(inference) if rid in (x.get("request_ids") or [])])
    assert batches[0]["event"] == "batch_started" and batches[0]["batch_id"] and batches[0]["process"] == "inference"
    ended = wait_until(lambda: [x for x in json_lines(worker) if x.get("job_id") == job_id])
    assert ended[-1]["event"] == "job_finished" and ended[-1]["process"] == "worker"
    assert ended[-1]["request_id"] == rid  # the same id in all three processes' logs
    for proc in (api, inference, worker):
        assert "a tracer bullet" not in proc.output()  # no prompt in any log by default


def test_http_observations_wait_in_the_process_while_redis_is_down(redis_conn, settings):
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    target = {"conn": down}
    recorder = HttpRecorder(lambda: target["conn"])
    recorder.observe("GET", "/v1/queues", 200, 0.003)
    recorder.flush()  # Redis down: kept, not lost, and no exception
    recorder.observe("GET", "/v1/queues", 200, 0.004)
    target["conn"] = redis.Redis.from_url(own_db(settings, 4))
    recorder.flush()
    m = samples(exposition(target["conn"], settings.queue_names)[0].decode())
    labels = (("method", "GET"), ("route", "/v1/queues"), ("status", "200"))
    assert m[("zimg_http_request_duration_seconds_count", labels)] == 2
    assert m[("zimg_http_request_duration_seconds_sum", labels)] == pytest.approx(0.007)
    assert m[("zimg_http_request_duration_seconds_bucket", (("le", "0.005"), *labels))] == 2
