"""Property-based fuzzing of every door client input comes through (fixed seed, bounded cases).

* :meth:`GenerateRequest.from_dict`: any JSON-like value gives a request or a
  :class:`ValidationError` naming a field, never another exception;
* the inference server's ``POST /v1/generate`` (a real ``zimg inference-server``):
  never a 5xx for client input, always a JSON ``detail``;
* the public API's ``POST /v1/jobs``: never a 5xx, a JSON error naming the field,
  and nothing enqueued on a 4xx;
* the dashboard's actions (``/rq/...`` POST routes, and GETs to them): never a 5xx, a GET or a
  foreign ``Origin`` never acts, and another app's jobs on the same Redis are never touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import redis
import requests
from conftest import start_fast_inference
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from zimg_queue.redis_server import EmbeddedRedis
from zimg_queue.request import SCHEMA, GenerateRequest, ValidationError

FUZZ = settings(
    derandomize=True, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

# Text with the awkward parts of Unicode: lone surrogates (valid in JSON as "\ud800"), NUL, RTL marks.
text = st.text(max_size=40) | st.sampled_from(
    ["", " ", "\x00", "\ud800", "a\udfffb", "\u202e", "x" * 2001, "png", "jpg", "PNG"]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 64, 128, 1024, 2048, 2**32 - 1, 2**32, -1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | text
)
json_like = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12
)
#: Dicts with the schema's own keys (so validation goes deep), random values, and now and then a stranger.
request_like = st.dictionaries(
    st.sampled_from([*SCHEMA, "prompt", "prompt", "width", "height"]) | text, json_like | scalars, max_size=9
)
#: Mostly-valid requests with one field broken, so every field's check is reached.
near_valid = st.fixed_dictionaries(
    {"prompt": st.just("a cat") | text},
    optional={
        "width": st.sampled_from([64, 128, 100, 0, -64, 4096, "64", 64.0, True]),
        "height": st.sampled_from([64, 128, 1000, 2**31, None, [64]]),
        "seed": st.sampled_from([0, 1, -1, 2**32, 2**40, "7", 1.5]),
        "num_inference_steps": st.sampled_from([1, 8, 0, 51, "8"]),
        "guidance_scale": st.sampled_from([0, 0.0, 1.0, -0.0, float("nan"), "0", False]),
        "output_format": st.sampled_from(["png", "jpeg", "jpg", "webp", "gif", "", None, 1]),
        "negative_prompt": text,
    },
)


def _check(value: object) -> GenerateRequest | ValidationError:
    try:
        return GenerateRequest.from_dict(value)
    except ValidationError as exc:
        assert exc.errors and all(isinstance(e["field"], str) and e["message"] for e in exc.errors)  # "" is a key too
        return exc


@FUZZ
@given(json_like | request_like | near_valid)
def test_from_dict_gives_a_request_or_a_validation_error_naming_a_field(value):
    outcome = _check(value)
    if isinstance(outcome, GenerateRequest):
        outcome.key.encode()  # a valid request can be hashed, stored and sent on
        json.dumps(outcome.to_dict(), ensure_ascii=False).encode("utf-8")


# --- the inference server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inference_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc = start_fast_inference(tmp_path_factory.mktemp("fuzz"))
    yield proc.url  # type: ignore[misc]
    proc.stop()


bodies = (
    st.binary(max_size=300).map(lambda b: ("raw", b))
    | st.sampled_from([b"\xff\xfe", b"{", b'{"prompt": "\xc3"}', b"[]", b"null", b"NaN", b"9" * 5000]).map(
        lambda b: ("raw", b)
    )
    | (json_like | request_like | near_valid).map(lambda v: ("json", v))
    | st.just(("raw", b'{"prompt": "' + b"x" * 70_000 + b'"}'))
)


def _send(url: str, kind: str, value: object, **kw) -> requests.Response:
    if kind == "json":
        data = json.dumps(value, ensure_ascii=True, allow_nan=True).encode()  # "\ud800" escapes reach the server
    else:
        data = value  # type: ignore[assignment]
    return requests.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=30, **kw)


@FUZZ
@given(bodies)
def test_inference_server_never_answers_5xx_to_client_input(inference_url: str, body):
    resp = _send(f"{inference_url}/v1/generate", *body)
    event(f"HTTP {resp.status_code}")  # pytest --hypothesis-show-statistics shows the mix
    assert resp.status_code < 500, (body, resp.status_code, resp.text[:300])
    payload = resp.json()
    if resp.status_code >= 400:
        assert payload["detail"], payload
        if resp.status_code == 422:
            assert all(d["loc"][0] == "body" and d["msg"] for d in payload["detail"])
    else:
        assert payload["image"] and payload["backend"] == "sim"


# --- the public API ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    """The web app (in-process) against a Redis of its own, so counting queued jobs is exact."""
    from zimg_queue.web.app import create_app

    server = EmbeddedRedis(tmp_path_factory.mktemp("fuzz-redis"), appendonly=False).start()
    app = create_app(
        {"ZIMG_REDIS_URL": server.url, "ZIMG_RATE_LIMIT": "1000000/60", "ZIMG_API_TOKEN": "", "TESTING": True}
    )
    yield app.test_client(), redis.Redis.from_url(server.url)
    server.stop()


def _job_count(conn: redis.Redis) -> int:
    return sum(1 for _ in conn.scan_iter("rq:job:*", count=1000))


job_ids = st.sampled_from(["a:b", "a/b", "../x", "", "x" * 129, "ok_id-1", "\u00e9", " ", "a b"]) | text
api_bodies = bodies | st.builds(
    lambda req, key, prio, extra: ("json", {**req, "idempotency_key": key, "priority": prio, **extra}),
    near_valid,
    job_ids | st.none(),
    st.sampled_from(["high", "normal", "low", "urgent", 1, None]),
    st.dictionaries(st.sampled_from(["options", "preset", "webhook", "zzz"]), json_like, max_size=2),
)


@FUZZ
@given(api_bodies)
def test_api_create_job_never_5xx_and_enqueues_nothing_on_4xx(api, body):
    client, conn = api
    before = _job_count(conn)
    kind, value = body
    data = json.dumps(value, ensure_ascii=True).encode() if kind == "json" else value
    resp = client.post("/v1/jobs", data=data, content_type="application/json")
    event(f"HTTP {resp.status_code}")
    assert resp.status_code < 500, (body, resp.status_code, resp.get_data(as_text=True)[:300])
    payload = resp.get_json()
    after = _job_count(conn)
    if resp.status_code >= 400:
        assert after == before, f"a job was enqueued on {resp.status_code}"
        assert payload["error"] and payload["message"]
        if resp.status_code == 400:
            assert payload["errors"] and all(isinstance(e["field"], str) and e["message"] for e in payload["errors"])
    else:
        assert resp.status_code in (200, 202) and payload["id"]


# --- the dashboard's actions ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard(api):
    """The same app, with jobs another app keeps on the same Redis: a pickled one, and a JSON one on its own queue."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    client, conn = api
    planted = {"data": b"\x80\x04\x95pickled", "status": "failed", "origin": "zimg-normal"}
    conn.hset("rq:job:foreign-pickle", mapping={**planted, "created_at": "2026-01-01T00:00:00.000000Z"})
    conn.zadd("rq:failed:zimg-normal", {"foreign-pickle": 9e9})
    other = Queue("their-app", connection=conn, serializer=JSONSerializer).enqueue_call("os.getcwd")
    return client, conn, ["foreign-pickle", other.id]


segments = st.sampled_from(
    ["zimg-normal", "zimg-low", "their-app", "failed", "queued", "started", "nope", "foreign-pickle"]
) | text.map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe=""))
dashboard_posts = st.tuples(
    st.sampled_from(
        [
            "/rq/job/{a}/requeue",
            "/rq/job/{a}/delete",
            "/rq/requeue/{a}",
            "/rq/queue/{a}/{b}/empty",
            "/rq/queue/{a}/compact",
        ]
    ),  # fmt: skip
    segments,
    segments,
    st.sampled_from(["GET", "POST"]),
    bodies,
    st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-urlencoded"]),
    st.sampled_from([{}, {"Origin": "http://localhost"}, {"Origin": "http://evil.example"}, {"Origin": "null"}]),
)


@FUZZ
@given(dashboard_posts)
def test_dashboard_actions_never_5xx_and_never_touch_another_apps_jobs(dashboard, action):
    client, conn, foreign = dashboard
    template, a, b, method, (kind, value), content_type, headers = action
    data = json.dumps(value, ensure_ascii=True).encode() if kind == "json" else value
    resp = client.open(template.format(a=a, b=b), method=method, data=data, content_type=content_type, headers=headers)
    event(f"HTTP {resp.status_code}")
    assert resp.status_code < 500, (action, resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.is_json or resp.status_code == 404, (action, resp.status_code)
    assert all(conn.exists(f"rq:job:{job_id}") for job_id in foreign), "another app's job was changed"
    if method == "GET" or headers.get("Origin") not in (None, "http://localhost"):
        assert resp.status_code in (403, 404, 405), (action, resp.status_code)  # never acted on
