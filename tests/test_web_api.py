"""The HTTP API: every route, status code and error body.

Route and status-code checks use Flask's test client on the real Redis; the happy path,
``?wait``, idempotency, cancelling and the ``--api`` client commands run against a real
``zimg web`` process, a real worker and the sim inference server.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.conftest import ROOT, rate_window_with_room, wait_until
from zimg_queue.queue import Producer

GOOD = {"prompt": "a cat on a windowsill", "width": 128, "height": 64, "seed": 5}
JSON = {"Content-Type": "application/json"}


def queue_length(redis_conn, priority: str = "normal") -> int:
    return redis_conn.llen(f"rq:queue:zimg-{priority}")


# ---------------------------------------------------------------- POST /v1/jobs, test client


def test_create_answers_202_with_id_status_and_urls(web_app, redis_conn, producer: Producer):
    client = web_app().test_client()
    r = client.post("/v1/jobs", json=GOOD)
    assert r.status_code == 202, r.json
    body = r.json
    assert body["status"] == "queued" and set(body["urls"]) == {"get", "image", "cancel"}
    assert body["urls"]["get"] == f"/v1/jobs/{body['id']}" and r.headers["Location"] == body["urls"]["get"]
    assert producer.status(body["id"])["request"]["prompt"] == GOOD["prompt"]
    assert queue_length(redis_conn) == 1


def test_priority_picks_the_queue(web_app, redis_conn):
    client = web_app().test_client()
    for priority in ("high", "low"):
        assert client.post("/v1/jobs", json={**GOOD, "priority": priority}).status_code == 202
        assert queue_length(redis_conn, priority) == 1
    assert queue_length(redis_conn, "normal") == 0


def test_idempotency_key_returns_the_same_job(web_app, redis_conn):
    client = web_app().test_client()
    first = client.post("/v1/jobs", json={**GOOD, "idempotency_key": "order-17_a"})
    second = client.post("/v1/jobs", json={**GOOD, "idempotency_key": "order-17_a"})
    assert first.status_code == second.status_code == 202
    assert first.json["id"] == second.json["id"] == "order-17_a"
    assert queue_length(redis_conn) == 1


def test_idempotency_key_without_a_seed_is_the_same_request_each_time(web_app, redis_conn):
    """An omitted seed is drawn per call: a retry of the same body must still find its job."""
    client = web_app().test_client()
    body = {"prompt": "a kite", "width": 64, "height": 64, "idempotency_key": "no-seed"}
    assert [client.post("/v1/jobs", json=body).status_code for _ in range(2)] == [202, 202]
    assert queue_length(redis_conn) == 1


@pytest.mark.parametrize(
    "change", [{"seed": 9}, {"prompt": "a dog"}, {"priority": "high"}, {"options": {"postprocess": {"format": "webp"}}}]
)
def test_idempotency_key_reused_with_another_request_is_409_naming_the_job(web_app, redis_conn, change):
    client = web_app().test_client()
    assert client.post("/v1/jobs", json={**GOOD, "idempotency_key": "order-18"}).status_code == 202
    r = client.post("/v1/jobs", json={**GOOD, **change, "idempotency_key": "order-18"})
    assert r.status_code == 409, r.json
    assert r.json["error"] == "idempotency_conflict" and r.json["id"] == "order-18"
    assert r.json["urls"]["get"] == "/v1/jobs/order-18" and "idempotency_key" in r.json["message"]
    assert queue_length(redis_conn) == 1 and queue_length(redis_conn, "high") == 0


def test_python_api_raises_a_clear_error_for_a_reused_key(producer: Producer):
    from zimg_queue.idempotency import IdempotencyConflict

    assert producer.enqueue("a fox", width=64, height=64, job_id="k1") == "k1"
    assert producer.enqueue("a fox", width=64, height=64, job_id="k1") == "k1"  # same request: same job
    with pytest.raises(IdempotencyConflict, match="already exists for a different request") as caught:
        producer.enqueue("a wolf", width=64, height=64, job_id="k1")
    assert caught.value.job_id == "k1" and caught.value.errors[0]["field"] == "job_id"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"width": 128}, {"prompt"}),
        ({"prompt": "   "}, {"prompt"}),
        ({**GOOD, "width": 1000}, {"width"}),
        ({**GOOD, "height": 99999}, {"height"}),
        ({**GOOD, "width": "512"}, {"width"}),
        ({**GOOD, "guidance_scale": 3.5}, {"guidance_scale"}),
        ({**GOOD, "seed": -1}, {"seed"}),
        ({**GOOD, "seed": 2**40}, {"seed"}),
        ({**GOOD, "output_format": "gif"}, {"output_format"}),
        ({**GOOD, "colour": "red"}, {"colour"}),
        ({**GOOD, "priority": "urgent"}, {"priority"}),
        ({**GOOD, "idempotency_key": "a:b"}, {"idempotency_key"}),
        ({**GOOD, "idempotency_key": "../x/y"}, {"idempotency_key"}),
        ({**GOOD, "idempotency_key": 7}, {"idempotency_key"}),
        ({"prompt": 5, "width": 1, "priority": None, "x": 1}, {"prompt", "width", "priority", "x"}),
    ],
)
def test_bad_fields_are_400_naming_every_field_and_enqueue_nothing(web_app, redis_conn, body, fields):
    r = web_app().test_client().post("/v1/jobs", json=body)
    assert r.status_code == 400, r.json
    assert r.json["error"] == "validation_error"
    assert {e["field"] for e in r.json["errors"]} == fields
    assert all(e["message"] for e in r.json["errors"])
    assert queue_length(redis_conn) == 0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"not json", "not valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"prompt": "caf\xe9"}', "UTF-8"),
        (b"[1, 2]", "JSON object"),
        (b'"a string"', "JSON object"),
        (b'{"prompt": "x", "seed": NaN}', "not valid JSON"),
        (b'{"prompt": "x", "seed": 1' + b"0" * 5000 + b"}", "not valid JSON"),
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b'{"prompt": "x"', "not valid JSON"),
    ],
)
def test_malformed_bodies_are_400_naming_the_body(web_app, redis_conn, raw, message):
    r = web_app(ZIMG_MAX_BODY_BYTES=200_000).test_client().post("/v1/jobs", data=raw, content_type="application/json")
    assert r.status_code == 400, r.json
    assert r.json["errors"][0]["field"] == "body" and message in r.json["errors"][0]["message"]
    assert queue_length(redis_conn) == 0


def test_lone_surrogate_is_400_naming_the_field(web_app, redis_conn):
    r = web_app().test_client().post("/v1/jobs", data=b'{"prompt": "a \\ud800 cat"}', content_type="application/json")
    assert r.status_code == 400 and r.json["errors"][0]["field"] == "prompt"
    assert queue_length(redis_conn) == 0


def test_oversized_body_is_413_json(web_app, redis_conn):
    client = web_app(ZIMG_MAX_BODY_BYTES=1000).test_client()
    r = client.post("/v1/jobs", json={"prompt": "x" * 2000})
    assert r.status_code == 413 and r.is_json
    assert r.json["errors"][0]["field"] == "body" and "1000 bytes" in r.json["message"]
    assert queue_length(redis_conn) == 0


def test_oversized_chunked_body_without_length_is_413_from_the_real_server(procs, web, redis_conn):
    server = web(ZIMG_MAX_BODY_BYTES="1000")
    chunks = iter([b'{"prompt": "', b"y" * 5000, b'"}'])  # a generator body: chunked, no Content-Length
    r = requests.post(f"{server.url}/v1/jobs", data=chunks, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413 and r.json()["errors"][0]["field"] == "body"
    ok = requests.post(f"{server.url}/v1/jobs", data=iter([b'{"prompt": "a cat"}']), headers=JSON, timeout=10)
    assert ok.status_code == 202, ok.text
    assert queue_length(redis_conn) == 1


def test_blocklisted_words_are_rejected_with_a_clear_message(web_app, redis_conn):
    client = web_app(ZIMG_PROMPT_BLOCKLIST="gore, bad thing").test_client()
    r = client.post("/v1/jobs", json={**GOOD, "prompt": "A BAD THING with Gore"})
    assert r.status_code == 400
    assert r.json["errors"] == [{"field": "prompt", "message": "contains blocked word(s): bad thing, gore"}]
    assert client.post("/v1/jobs", json={**GOOD, "prompt": "a gorgeous sunset"}).status_code == 202  # whole words


def test_rate_limit_is_per_client_and_shared_through_redis(web_app, redis_conn):
    one, two = web_app(ZIMG_RATE_LIMIT="3/60").test_client(), web_app(ZIMG_RATE_LIMIT="3/60").test_client()
    rate_window_with_room(60)
    codes = [c.post("/v1/jobs", json=GOOD).status_code for c in (one, two, one)]
    assert codes == [202, 202, 202]  # two app instances, one counter in Redis
    r = two.post("/v1/jobs", json=GOOD)
    assert r.status_code == 429 and r.json["error"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 61 and r.headers["X-RateLimit-Remaining"] == "0"
    other = one.post("/v1/jobs", json=GOOD, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert other.status_code == 202
    assert queue_length(redis_conn) == 4


# ---------------------------------------------------------------- reading, test client


@pytest.mark.parametrize("job_id", ["nope", "a:b", "x" * 200])
def test_unknown_or_malformed_ids_are_404_json(web_app, job_id):
    client = web_app().test_client()
    for method, path in (
        ("get", f"/v1/jobs/{job_id}"),
        ("get", f"/v1/jobs/{job_id}/image"),
        ("delete", f"/v1/jobs/{job_id}"),
        ("post", f"/v1/jobs/{job_id}/cancel"),
    ):
        r = getattr(client, method)(path)
        assert r.status_code == 404 and r.json["error"] == "not_found", (method, path, r.json)


def test_unknown_route_and_method_are_json(web_app):
    client = web_app().test_client()
    assert client.get("/v2/nothing").status_code == 404 and client.get("/v2/nothing").is_json
    r = client.put("/v1/jobs")
    assert r.status_code == 405 and r.json["error"] == "method_not_allowed"


@pytest.mark.parametrize("wait", ["abc", "-1", "61", "nan", "inf", "1e9"])
def test_bad_wait_is_400(web_app, producer: Producer, wait):
    job_id = producer.enqueue("x", width=64, height=64)
    r = web_app().test_client().get(f"/v1/jobs/{job_id}?wait={wait}")
    assert r.status_code == 400 and r.json["errors"][0]["field"] == "wait"


def test_wait_returns_after_n_seconds_while_still_queued(web_app, producer: Producer):
    job_id = producer.enqueue("x", width=64, height=64)
    started = time.monotonic()
    r = web_app().test_client().get(f"/v1/jobs/{job_id}?wait=1")
    assert r.status_code == 200 and r.json["status"] == "queued" and r.json["position"] == 0
    assert 0.9 <= time.monotonic() - started < 5


def test_image_of_an_unfinished_job_is_404(web_app, producer: Producer):
    job_id = producer.enqueue("x", width=64, height=64)
    r = web_app().test_client().get(f"/v1/jobs/{job_id}/image")
    assert r.status_code == 404 and r.json["error"] == "not_ready" and r.json["status"] == "queued"


def test_image_path_outside_the_store_is_never_served(web_app, producer: Producer, monkeypatch, tmp_path):
    from zimg_queue.web import api

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not yours")
    job_id = producer.enqueue("x", width=64, height=64)

    def finished(job_id: str, wait: float = 0.0) -> dict:
        return {"id": job_id, "status": "finished", "result": {"path": str(secret), "format": "png"}}

    monkeypatch.setattr(api, "load_status", finished)
    r = web_app().test_client().get(f"/v1/jobs/{job_id}/image")
    assert r.status_code == 404 and r.json["error"] == "image_missing"


def test_cancel_of_a_queued_job_means_it_never_runs(web_app, procs, producer: Producer):
    client = web_app().test_client()
    job_id = client.post("/v1/jobs", json=GOOD).json["id"]
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json["status"] == "canceled"
    other = client.post("/v1/jobs", json={**GOOD, "seed": 6}).json["id"]
    assert client.post(f"/v1/jobs/{other}/cancel").json["status"] == "canceled"
    procs.inference(latency_a="0", latency_b="0")
    procs.worker(burst=True).popen.wait(timeout=30)
    for jid in (job_id, other):
        status = producer.status(jid)
        assert status["status"] == "canceled" and status["started_at"] is None
    assert not list(Path(procs.settings.images_path).glob("*"))


def test_queues_lists_depths_counts_and_workers(web_app, procs, producer: Producer):
    producer.enqueue("x", width=64, height=64, priority="low")
    client = web_app().test_client()
    body = client.get("/v1/queues").json
    assert [q["name"] for q in body["queues"]] == ["zimg-high", "zimg-normal", "zimg-low"]
    assert body["queues"][2]["queued"] == 1 and body["workers"] == []
    procs.worker()
    body = wait_until(lambda: (b := client.get("/v1/queues").json)["workers"] and b)
    assert body["workers"][0]["queues"] == ["zimg-high", "zimg-normal", "zimg-low"]


def test_healthz_is_503_naming_what_is_down_then_200(web_app, procs):
    client = web_app().test_client()
    r = client.get("/healthz")
    assert r.status_code == 503
    assert r.json["redis"]["ok"] and not r.json["inference"]["ok"] and r.json["workers"]["count"] == 0
    procs.inference(latency_a="0", latency_b="0")
    procs.worker()
    r = wait_until(lambda: (resp := client.get("/healthz")).status_code == 200 and resp)
    assert r.json == {
        "status": "ok",
        "redis": {"ok": True},
        "inference": {"ok": True},
        "workers": {"ok": True, "count": 1},
    }


def test_redis_down_is_503_not_500():
    import redis
    from flask import Flask

    from zimg_queue.redis_server import free_port
    from zimg_queue.settings import Settings
    from zimg_queue.web import ZimgQueue

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens here
    app = Flask(__name__)
    app.config.update(ZIMG_REDIS_URL=url, ZIMG_RATE_LIMIT="10/60")
    ZimgQueue(app, producer=Producer(redis.Redis.from_url(url, socket_connect_timeout=0.2), Settings(redis_url=url)))
    client = app.test_client()
    assert client.get("/healthz").status_code == 503
    for r in (client.post("/v1/jobs", json=GOOD), client.get("/v1/jobs/abc"), client.get("/v1/queues")):
        assert r.status_code == 503 and r.json["error"] == "unavailable"


# ---------------------------------------------------------------- real `zimg web` process and worker


def test_happy_path_against_a_real_server_and_worker(stack, web):
    server = web()
    r = requests.post(f"{server.url}/v1/jobs", json=GOOD, timeout=10)
    assert r.status_code == 202, r.text
    job = r.json()
    status = requests.get(f"{server.url}{job['urls']['get']}", params={"wait": 30}, timeout=40).json()
    assert status["status"] == "finished", status
    assert status["progress"] == {"stage": "done", "percent": 100}
    result = status["result"]
    assert result["image_url"] == job["urls"]["image"] and (result["width"], result["height"]) == (128, 64)
    image = requests.get(f"{server.url}{result['image_url']}", timeout=10)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
    assert hashlib.sha256(image.content).hexdigest() == result["sha256"]
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{server.url}/v1/queues", timeout=5).json()["queues"][1]["finished"] == 1


def test_wait_returns_as_soon_as_the_job_finishes(stack, web):
    server = web()
    job = requests.post(f"{server.url}/v1/jobs", json={**GOOD, "output_format": "webp"}, timeout=10).json()
    started = time.monotonic()
    status = requests.get(f"{server.url}/v1/jobs/{job['id']}?wait=60", timeout=70).json()
    assert status["status"] == "finished" and time.monotonic() - started < 10
    image = requests.get(f"{server.url}/v1/jobs/{job['id']}/image", timeout=10)
    assert image.headers["Content-Type"] == "image/webp"


def test_cancel_of_a_started_job_stops_it(procs, web, producer: Producer):
    procs.inference(latency_a="30", latency_b="0")  # a job that would run for 30 s
    procs.worker()
    server = web()
    job_id = requests.post(f"{server.url}/v1/jobs", json=GOOD, timeout=10).json()["id"]
    wait_until(lambda: producer.status(job_id)["status"] == "started", timeout=30)
    r = requests.delete(f"{server.url}/v1/jobs/{job_id}", timeout=10)
    assert r.status_code == 200
    status = requests.get(f"{server.url}/v1/jobs/{job_id}?wait=20", timeout=30).json()
    assert status["status"] == "stopped", status
    assert not list(Path(procs.settings.images_path).glob("*.png"))


def test_cli_talks_to_a_remote_api(stack, web, tmp_path):
    server = web(ZIMG_API_TOKEN="cli-token")
    env = {**stack.env(ZIMG_API_TOKEN="cli-token"), "ZIMG_REDIS_URL": "redis://127.0.0.1:1/0"}  # Redis unreachable

    def zimg(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "zimg_queue.cli", *args, "--api", server.url]
        return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)

    out = tmp_path / "cat.png"
    done = zimg("generate", "a cat", "--width", "128", "--height", "128", "--seed", "3", "--wait", "--output", str(out))
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert image.size == (128, 128)
    job_id = zimg("generate", "a dog", "--width", "64", "--height", "64", "--priority", "low").stdout.strip()
    assert zimg("status", job_id).returncode == 0 and job_id in zimg("status", job_id).stdout
    assert '"status"' in zimg("cancel", job_id, "--json").stdout
    bad = zimg("generate", "x", "--width", "100")
    assert bad.returncode == 2 and "width" in bad.stderr
    missing = zimg("status", "no-such-job")
    assert missing.returncode == 1 and "404" in missing.stderr
    env["ZIMG_API_TOKEN"] = "wrong"
    assert "401" in zimg("status", job_id).stderr


def test_behind_a_proxy_the_rate_limit_keys_on_the_forwarded_client(web_app):
    client = web_app(ZIMG_RATE_LIMIT="1/60", ZIMG_PROXY_COUNT=1).test_client()
    rate_window_with_room(60)

    def post(addr: str) -> int:
        return client.post("/v1/jobs", json=GOOD, headers={"X-Forwarded-For": addr}).status_code

    assert [post("203.0.113.1"), post("203.0.113.2"), post("203.0.113.1")] == [202, 202, 429]


def test_zimg_batch_over_the_api(stack, web, tmp_path: Path):
    """``zimg batch FILE --api URL``: the same campaign ids, one POST each, with Redis out of the client's reach."""
    server = web(ZIMG_API_TOKEN="cli-token")
    env = {**stack.env(ZIMG_API_TOKEN="cli-token"), "ZIMG_REDIS_URL": "redis://127.0.0.1:1/0"}
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse at dusk\na bowl of ramen\n")
    cmd = [sys.executable, "-m", "zimg_queue.cli", "batch", str(prompts), "--format", "webp", "--api", server.url]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines()[1:] if " finished " in line]
    paths = [Path(line.split()[-1]) for line in lines]
    assert len(paths) == 2 and all(p.suffix == ".webp" and p.is_file() for p in paths)
    again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout == done.stdout  # same ids: nothing made twice


# ---------------------------------------------------------------- big batches under the rate limit (issue 13.4)


def _rate_counted(redis_conn) -> int:
    return sum(int(redis_conn.get(k) or 0) for k in redis_conn.scan_iter("zimg:ratelimit:*"))


def test_zimg_batch_over_the_api_finishes_past_the_rate_limit_and_reruns_free(stack, web, tmp_path: Path, redis_conn):
    """Changes ZIMG_RATE_LIMIT to 4 per 2 s (so a short test crosses it; the test above runs on the shipped 600/60)."""
    server = web(ZIMG_RATE_LIMIT="4/2")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a lighthouse number {i}\n" for i in range(10)))
    env = {**stack.env(), "ZIMG_REDIS_URL": "redis://127.0.0.1:1/0"}  # the client reaches only the API
    cmd = [sys.executable, "-m", "zimg_queue.cli", "batch", str(prompts), "--api", server.url]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert sum(" finished " in line for line in done.stdout.splitlines()) == 10
    assert "rate_limited" in done.stderr  # it did hit the limit, and waited instead of failing
    wait_until(lambda: _rate_counted(redis_conn) == 0, timeout=10)  # the first run's windows have expired
    again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0 and again.stdout == done.stdout
    assert "rate_limited" not in again.stderr and _rate_counted(redis_conn) == 0  # re-POSTs are never counted


def test_api_client_shows_a_countdown_on_a_terminal_while_rate_limited(web, procs):
    """Changes ZIMG_RATE_LIMIT to 1 per 2 s, so a job waits for the next window.

    Three jobs, not two: the limit counts in fixed windows, and two requests can straddle a window's end (then
    neither is limited). Three requests made milliseconds apart span at most two windows, so one is always limited.
    """
    import io

    from zimg_queue.web import ApiClient

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    server = web(ZIMG_RATE_LIMIT="1/2")
    screen = Terminal()
    client = ApiClient(server.url, progress=screen)
    ids = [client.enqueue("a cat", width=64, height=64) for _ in range(3)]
    assert len(set(ids)) == 3
    assert "\rrate limited by" in screen.getvalue() and "retrying in" in screen.getvalue()


def test_api_client_gives_up_after_max_rate_wait(web, procs):
    from zimg_queue.web import ApiClient, ApiClientError

    server = web(ZIMG_RATE_LIMIT="1/60")
    client = ApiClient(server.url, max_rate_wait=1)
    rate_window_with_room(60)  # a second request in the window's last second would be waited out, not refused
    client.enqueue("a cat", width=64, height=64)
    with pytest.raises(ApiClientError, match="429"):
        client.enqueue("a dog", width=64, height=64)


def test_retry_after_reads_seconds_and_dates():
    from email.utils import formatdate

    from zimg_queue.web.client import retry_after

    def answer(value: str | None) -> requests.Response:
        r = requests.Response()
        if value is not None:
            r.headers["Retry-After"] = value
        return r

    assert retry_after(answer("7")) == 7 and retry_after(answer(None)) == 1 and retry_after(answer("soon")) == 1
    assert 25 <= retry_after(answer(formatdate(time.time() + 30, usegmt=True))) <= 31
    assert retry_after(answer("999999")) == 300


def test_a_watermark_dir_in_app_config_is_the_one_the_api_uses(settings, redis_conn, tmp_path, monkeypatch):
    """``ZIMG_WATERMARK_DIR`` in ``app.config`` alone (no environment variable) names the submittable watermarks.

    The producer resolved watermarks from a second ``Settings()`` built from the environment, so a Flask app
    configured in code accepted any name unchecked and sent no watermark bytes to the workers.
    """
    from flask import Flask

    from zimg_queue.web import ZimgQueue

    monkeypatch.delenv("ZIMG_WATERMARK_DIR", raising=False)
    monkeypatch.delenv("ZIMG_PRESETS", raising=False)
    marks = tmp_path / "marks"
    marks.mkdir()
    Image.new("RGBA", (40, 20), (255, 255, 255, 255)).save(marks / "brand.png")
    app = Flask(__name__)
    app.config.update(ZIMG_REDIS_URL=settings.redis_url, ZIMG_WATERMARK_DIR=str(marks), ZIMG_RATE_LIMIT="0")
    ZimgQueue(app)
    client = app.test_client()

    r = client.post("/v1/jobs", json={**GOOD, "options": {"postprocess": {"watermark": "brand"}}})
    assert r.status_code == 202, r.json
    mark = Producer(redis_conn, settings).fetch(r.json["id"]).args[1]["postprocess"]["watermark"]
    assert mark["sha256"] == hashlib.sha256((marks / "brand.png").read_bytes()).hexdigest()  # sent by content

    r = client.post("/v1/jobs", json={**GOOD, "options": {"postprocess": {"watermark": "ghost"}}})
    assert r.status_code == 400, r.json
    assert [e["field"] for e in r.json["errors"]] == ["postprocess.watermark.name"], r.json
    assert "known: brand" in r.json["errors"][0]["message"]
    assert queue_length(redis_conn) == 1

    schemas = client.get("/v1/openapi.json").json["components"]["schemas"]
    assert schemas["Watermark"]["properties"]["name"]["enum"] == ["brand"]
