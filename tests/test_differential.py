"""The published schema and the server agree: ``202`` exactly when the schema validates the body, never a 5xx.

For ``POST /v1/jobs`` against ``JobRequest`` from ``/v1/openapi.json``, and for the inference
server's ``POST /v1/generate`` against ``UpstreamRequest`` from *its* ``/v1/openapi.json``:

* a fixed list of edge bodies (the issue's 33 kinds and more);
* bodies generated *from* the published schema (all must be accepted): hypothesis-jsonschema for
  each value, composed into objects by :func:`valid_bodies`;
* bodies outside it: one field of a valid body replaced by any JSON value, a stranger key added,
  a required key dropped (accepted exactly when the schema says so).

The schema is judged by jsonschema's Draft 2020-12 validator, with one correction: jsonschema
evaluates ``pattern`` with Python's ``re``, whose ``$`` also matches before a final newline;
JSON Schema means ECMA-262, where ``$`` is the end of the text (as in the server's Rust regex).
So ``$`` is read as ``\\Z`` here (:func:`ecma_pattern`). Bodies are JSON text: lone surrogates are
not Unicode text and are rejected at the body (tests/test_request.py), outside any schema.

Settings changed for the test app, and why: ``ZIMG_RATE_LIMIT=0`` (the shipped ``600/60`` would
answer 429 to valid bodies after 600 of them: tests/test_web_api.py covers the limit on the
default), ``ZIMG_WEBHOOK_ALLOW_PRIVATE=true`` (the default refuses a webhook to a literal loopback or
private address, a deployment policy the schema states in words: see the twin test on the default)
and Redis is flushed before each body, so a repeated ``idempotency_key`` with another
body is never a 409 (tests/test_web_api.py covers that). Everything else is the shipped default:
no presets (so ``options.preset`` has an empty ``enum``), no blocklist, ``ZIMG_MAX_PIXELS`` 2048².
A body larger than ``ZIMG_MAX_BODY_BYTES`` must get 413 (a transport limit the schema does not state).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import requests
from conftest import start_fast_inference
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

MAX_BODY = 65536  # the shipped ZIMG_MAX_BODY_BYTES
DIFF = settings(
    derandomize=True,
    max_examples=40,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # a failure is reported as drawn: shrinking these bodies took minutes
    # The app fixture is per test, not per example: each example flushes Redis itself (post_job).
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


def ecma_pattern(pattern: str) -> str:
    """``pattern`` for Python's ``re`` with ECMA-262's ``$`` (end of text): a bare ``$`` becomes ``\\Z``."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        out.append(r"\Z" if c == "$" and not in_class else c)
        i += 1
    return "".join(out)


def _pattern(validator, patrn, instance, schema):
    if validator.is_type(instance, "string") and not re.search(ecma_pattern(patrn), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {patrn!r}")


Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


def inline(node: Any, components: dict[str, Any]) -> Any:
    """The schema with every ``#/components/schemas/X`` reference replaced by X (none is recursive)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = inline(components[node["$ref"].rsplit("/", 1)[-1]], components)
            rest = {k: inline(v, components) for k, v in node.items() if k != "$ref"}
            return {"allOf": [target, rest]} if rest else target
        return {k: inline(v, components) for k, v in node.items()}
    if isinstance(node, list):
        return [inline(v, components) for v in node]
    return node


def published(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return inline(doc["components"]["schemas"][name], doc["components"]["schemas"])


def check_meta(schema: dict[str, Any]) -> None:
    assert "integer" in json.dumps(schema)
    jsonschema.Draft202012Validator.check_schema(schema)


# --- the bodies ----------------------------------------------------------------------------------------------

GOOD = {"prompt": "a paper boat", "width": 128, "height": 64}
#: The issue's kinds, and a few more: (name, body).
EDGES: list[tuple[str, Any]] = [
    ("minimal", {"prompt": "a cat"}),
    ("blank prompt", {"prompt": "   "}),
    ("newline prompt", {"prompt": "\n"}),
    ("empty prompt", {"prompt": ""}),
    ("ideographic space prompt", {"prompt": "\u3000"}),
    ("NUL in prompt", {"prompt": "a\x00cat"}),
    ("NUL in negative_prompt", {**GOOD, "negative_prompt": "\x00"}),
    ("zero-width space prompt", {"prompt": "\u200b"}),
    ("prompt with trailing newline", {"prompt": "a cat\n"}),
    ("prompt of 2000", {"prompt": "é" * 2000}),
    ("prompt of 2001", {"prompt": "x" * 2001}),
    ("width 512.0", {**GOOD, "width": 512.0}),
    ("width 512.5", {**GOOD, "width": 512.5}),
    ("width as string", {**GOOD, "width": "512"}),
    ("width true", {**GOOD, "width": True}),
    ("width 1000", {**GOOD, "width": 1000}),
    ("width 1e300", {**GOOD, "width": 1e300}),
    ("width 10**30", {**GOOD, "width": 10**30}),
    ("height null", {**GOOD, "height": None}),
    ("steps 8.0", {**GOOD, "num_inference_steps": 8.0}),
    ("steps false", {**GOOD, "num_inference_steps": False}),
    ("seed 7.0", {**GOOD, "seed": 7.0}),
    ("seed null", {**GOOD, "seed": None}),
    ("seed -1", {**GOOD, "seed": -1}),
    ("seed 2**32", {**GOOD, "seed": 2**32}),
    ("seed 2**32-1", {**GOOD, "seed": 2**32 - 1}),
    ("seed 'random'", {**GOOD, "seed": "random"}),
    ("guidance 0", {**GOOD, "guidance_scale": 0}),
    ("guidance -0.0", {**GOOD, "guidance_scale": -0.0}),
    ("guidance 1.5", {**GOOD, "guidance_scale": 1.5}),
    ("guidance false", {**GOOD, "guidance_scale": False}),
    ("format jpg", {**GOOD, "output_format": "jpg"}),
    ("format PNG", {**GOOD, "output_format": "PNG"}),
    ("format webp", {**GOOD, "output_format": "webp"}),
    ("format gif", {**GOOD, "output_format": "gif"}),
    ("unknown field", {**GOOD, "colour": "red"}),
    ("nested object", {**GOOD, "width": {"value": 512}}),
    ("array prompt", {"prompt": ["a", "cat"]}),
    ("no prompt", {"width": 512}),
    ("empty object", {}),
    ("priority high", {**GOOD, "priority": "high"}),
    ("priority urgent", {**GOOD, "priority": "urgent"}),
    ("priority null", {**GOOD, "priority": None}),
    ("idempotency key", {**GOOD, "idempotency_key": "order-42"}),
    ("idempotency key null", {**GOOD, "idempotency_key": None}),
    ("idempotency key with colon", {**GOOD, "idempotency_key": "a:b"}),
    ("idempotency key with newline", {**GOOD, "idempotency_key": "abc\n"}),
    ("idempotency key of 129", {**GOOD, "idempotency_key": "k" * 129}),
    ("options null", {**GOOD, "options": None}),
    ("options empty", {**GOOD, "options": {}}),
    ("options unknown", {**GOOD, "options": {"colour": 1}}),
    ("options array", {**GOOD, "options": []}),
    ("webhook", {**GOOD, "options": {"webhook_url": "https://example.com/hook?x=1"}}),
    ("webhook gopher", {**GOOD, "options": {"webhook_url": "gopher://example.com"}}),
    ("webhook with newline", {**GOOD, "options": {"webhook_url": "https://example.com/\n"}}),
    ("storage s3", {**GOOD, "options": {"storage": "s3"}}),
    ("storage gcs", {**GOOD, "options": {"storage": "gcs"}}),
    ("postprocess", {**GOOD, "options": {"postprocess": {"format": "jpg", "quality": 80.0, "thumbnail": 64}}}),
    ("postprocess quality true", {**GOOD, "options": {"postprocess": {"quality": True}}}),
    ("watermark by name", {**GOOD, "options": {"postprocess": {"watermark": "brand"}}}),
    ("watermark bad name", {**GOOD, "options": {"postprocess": {"watermark": "../etc/passwd"}}}),
    ("watermark opacity 2", {**GOOD, "options": {"postprocess": {"watermark": {"name": "b", "opacity": 2}}}}),
    ("placeholders without preset", {**GOOD, "options": {"placeholders": {"title": "x"}}}),
    ("placeholders empty without preset", {**GOOD, "options": {"placeholders": {}}}),
    ("unconfigured preset", {"options": {"preset": "main"}}),
    ("body is an array", [GOOD]),
    ("body is a string", "a cat"),
    ("body is null", None),
]


def valid_bodies(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Instances of ``schema``, drawn from it: hypothesis-jsonschema for leaves, objects composed here.

    hypothesis-jsonschema 0.23's object strategy uses a Hypothesis internal (``many.more()``) that
    Hypothesis 6.170 removed, so objects are built from their properties with ``fixed_dictionaries``,
    one ``anyOf`` branch at a time, and every draw is kept only if the (ECMA) validator agrees.
    """
    return _draw(schema).filter(Validator(schema).is_valid)


def _draw(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    branches = schema.get("anyOf")
    if branches:
        base = {k: v for k, v in schema.items() if k != "anyOf"}
        if all(set(b) <= {"required", "properties"} and "required" in b for b in branches):
            # constraints on one object (JobRequest: prompt, or options.preset): each branch's required keys in turn
            required = [sorted({*base.get("required", ()), *b["required"]}) for b in branches]
            return st.one_of([_draw({**base, "required": r}) for r in required])
        return st.one_of([_draw({**base, **b}) for b in branches])  # alternatives of a value
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(part)
        return _draw({**merged, **{k: v for k, v in schema.items() if k != "allOf"}})
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        if props:
            return st.fixed_dictionaries(
                {k: _draw(v) for k, v in props.items() if k in required},
                optional={k: _draw(v) for k, v in props.items() if k not in required},
            )
        extra = schema.get("additionalProperties", {})
        return st.dictionaries(st.text(max_size=8), _draw(extra) if isinstance(extra, dict) else st.none(), max_size=3)
    return from_schema(schema)


def _json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=12)
        | st.sampled_from(["", " ", "\n", "png", "jpg", "PNG", "high", "x" * 2001, 64, 512.0, 8.0, 0.0])
    )

    def nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)

    return st.recursive(scalars, nest, max_leaves=6)


def outside(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Bodies near ``schema`` but not drawn from it: one key replaced, one stranger added, or one dropped."""
    keys = sorted(schema.get("properties", {}))

    def mutate(body: Any, how: str, key: str, value: Any) -> Any:
        if not isinstance(body, dict):
            return body
        body = dict(body)
        if how == "replace":
            body[key] = value
        elif how == "add":
            body["x_" + key] = value
        else:
            body.pop(key, None)
        return body

    how = st.sampled_from(["replace", "replace", "add", "drop"])
    return st.builds(mutate, valid_bodies(schema), how, st.sampled_from(keys), _json_values())


# --- POST /v1/jobs ---------------------------------------------------------------------------------------------


@pytest.fixture
def api(web_app, redis_conn):
    """The test client of ``zimg web``'s app (rate limit off: see the module docstring) and its JobRequest schema."""
    client = web_app(ZIMG_WEBHOOK_ALLOW_PRIVATE="true").test_client()
    doc = client.get("/v1/openapi.json").json
    schema = published(doc, "JobRequest")
    check_meta(schema)
    return client, Validator(schema), schema, redis_conn


def post_job(api, body: Any) -> tuple[int, bool, Any]:
    client, validator, _, conn = api
    conn.flushall()  # every body on an empty store: no 409 from a key seen with another body
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
    resp = client.post("/v1/jobs", data=raw, content_type="application/json")
    assert resp.status_code < 500, (body, resp.status_code, resp.get_data(as_text=True)[:300])
    if len(raw) > MAX_BODY:
        assert resp.status_code == 413, (len(raw), resp.status_code)
        return resp.status_code, validator.is_valid(body), resp.json
    return resp.status_code, validator.is_valid(body), resp.json


def agrees(api, body: Any) -> bool:
    status, valid, payload = post_job(api, body)
    if status == 413:
        return valid
    assert (status == 202) == valid, (body, status, payload)
    if status != 202:
        assert status == 400 and payload["errors"], (body, status, payload)
    return valid


@pytest.mark.parametrize(("name", "body"), EDGES, ids=[name for name, _ in EDGES])
def test_edge_bodies_are_accepted_exactly_when_the_published_schema_says(api, name, body):
    agrees(api, body)


def test_a_real_zimg_web_server_agrees_on_every_edge(web, redis_conn):
    """The same edges over HTTP to a real ``zimg web`` process (same settings as the test app, see above)."""
    server = web(ZIMG_RATE_LIMIT="0", ZIMG_WEBHOOK_ALLOW_PRIVATE="true")
    session = requests.Session()
    validator = Validator(published(session.get(f"{server.url}/v1/openapi.json", timeout=10).json(), "JobRequest"))
    for name, body in EDGES:
        redis_conn.flushall()
        raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
        resp = session.post(f"{server.url}/v1/jobs", data=raw, headers={"Content-Type": "application/json"}, timeout=10)
        assert (resp.status_code == 202) == validator.is_valid(body), (name, resp.status_code, resp.text[:300])
        assert resp.status_code in (202, 400), (name, resp.status_code)


def test_the_edges_cover_both_answers(api):
    verdicts = {name: api[1].is_valid(body) for name, body in EDGES}
    assert sum(verdicts.values()) >= 15 and len(verdicts) - sum(verdicts.values()) >= 30
    for name in ("width 512.0", "steps 8.0", "seed 7.0", "seed null", "format jpg", "guidance 0"):
        assert verdicts[name], f"{name}: decided accepted"
    for name in ("blank prompt", "newline prompt", "NUL in prompt", "format PNG", "idempotency key with newline"):
        assert not verdicts[name], f"{name}: decided rejected"


def test_on_the_default_a_private_webhook_is_the_one_policy_the_schema_states_in_words(web_app, redis_conn):
    client = web_app().test_client()
    doc = client.get("/v1/openapi.json").json
    body = {**GOOD, "options": {"webhook_url": "http://127.0.0.1:9/h"}}
    assert Validator(published(doc, "JobRequest")).is_valid(body)
    assert (
        "ZIMG_WEBHOOK_ALLOW_PRIVATE"
        in doc["components"]["schemas"]["JobOptions"]["properties"]["webhook_url"]["anyOf"][0]["description"]
    )
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 400 and resp.json["errors"][0]["field"] == "options.webhook_url"
    public = {**GOOD, "options": {"webhook_url": "https://example.com/h"}}
    assert client.post("/v1/jobs", json=public).status_code == 202


@DIFF
@given(body=st.data())
def test_bodies_generated_from_the_schema_are_all_accepted(api, body):
    schema = api[2]
    drawn = body.draw(valid_bodies(schema))
    assert agrees(api, drawn), drawn


@DIFF
@given(data=st.data())
def test_bodies_outside_the_schema_are_rejected_exactly_when_it_says(api, data):
    agrees(api, data.draw(outside(api[2])))


# --- POST /v1/generate on the inference server -------------------------------------------------------------


@pytest.fixture(scope="module")
def inference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """A real ``zimg inference-server`` (sim backend, no latency) and the schema it publishes."""
    proc = start_fast_inference(tmp_path_factory.mktemp("differential"))
    doc = requests.get(f"{proc.url}/v1/openapi.json", timeout=10).json()
    schema = published(doc, "UpstreamRequest")
    check_meta(schema)
    yield proc.url, schema  # type: ignore[misc]
    proc.stop()


def generate_agrees(session: requests.Session, url: str, schema: dict[str, Any], body: Any) -> bool:
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
    resp = session.post(f"{url}/v1/generate", data=raw, headers={"Content-Type": "application/json"}, timeout=30)
    valid = Validator(schema).is_valid(body)
    assert resp.status_code < 500, (body, resp.status_code, resp.text[:300])
    if len(raw) > MAX_BODY:
        assert resp.status_code == 413
        return valid
    assert (resp.status_code == 200) == valid, (body, resp.status_code, resp.text[:300])
    if resp.status_code == 200:
        assert resp.json()["image"]
    else:
        assert resp.status_code == 422 and resp.json()["detail"]
    return valid


QUEUE_FIELDS = ("priority", "idempotency_key", "options")
UPSTREAM_EDGES = [
    (n, {k: v for k, v in b.items() if k not in QUEUE_FIELDS} if isinstance(b, dict) else b) for n, b in EDGES
] + [("webp", {**GOOD, "output_format": "webp"})]


def test_inference_server_edges_agree_with_its_published_schema(inference):
    url, schema = inference
    session = requests.Session()
    verdicts = [generate_agrees(session, url, schema, body) for _, body in UPSTREAM_EDGES]
    assert any(verdicts) and not all(verdicts)


@settings(DIFF, max_examples=30)
@given(data=st.data())
def test_inference_server_generated_bodies_agree_with_its_published_schema(inference, data):
    url, schema = inference
    small = {**schema, "properties": {**schema["properties"]}}
    body = data.draw(valid_bodies(small) | outside(small))
    if Validator(schema).is_valid(body) and isinstance(body, dict):
        body = {**body, "width": 64, "height": 64}  # still valid; keeps the sim's images small
    generate_agrees(_SESSION, url, schema, body)


_SESSION = requests.Session()
