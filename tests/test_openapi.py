"""The OpenAPI document is valid, lists every route ``zimg web`` serves, and describes what the server really sends."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from flask import Flask
from openapi_spec_validator import validate
from werkzeug.routing import Rule

from tests.conftest import rate_window_with_room
from zimg_queue.models import JobSubmission
from zimg_queue.request import json_schema
from zimg_queue.settings import PRIORITIES
from zimg_queue.status import job_status
from zimg_queue.web import ZimgQueue
from zimg_queue.web.openapi import OPERATIONS, document, upstream_document

#: rq-dashboard's own pages and assets: documented as one entry (its front page), not route by route.
#: Static files (the app's and any blueprint's) are not API routes either.
DASHBOARD_INTERNALS = re.compile(r"^rq_dashboard\.")


def _openapi_path(rule: Rule, prefix: str = "") -> str:
    return re.sub(r"<(?:[^:<>]+:)?(\w+)>", r"{\1}", rule.rule)[len(prefix) :] or "/"


def app_routes(app: Flask, prefix: str = "") -> set[tuple[str, str]]:
    """Every (path, method) the app answers, but static files and rq-dashboard's internals."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static") or DASHBOARD_INTERNALS.match(rule.endpoint):
            continue
        methods = (rule.methods or set()) - {"HEAD", "OPTIONS"}
        routes |= {(_openapi_path(rule, prefix), m.lower()) for m in methods}
    return routes


def documented(doc: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item if method != "parameters"}


def component(doc: dict, name: str) -> jsonschema.Draft202012Validator:
    """A validator for ``#/components/schemas/<name>`` with the document's other components in reach."""
    root = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(root)


def conforms(doc: dict, name: str, instance: Any) -> None:
    errors = sorted(component(doc, name).iter_errors(instance), key=str)
    assert not errors, f"{name}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def test_the_served_document_is_valid_openapi_3_1(web_app):
    doc = web_app().test_client().get("/v1/openapi.json").json
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    validate(upstream_document())


def test_every_route_of_zimg_web_is_documented_and_nothing_else(web_app):
    """Walks the url_map of ``zimg web``'s app: a route added without an OpenAPI entry fails here."""
    app = web_app()
    doc = app.test_client().get("/v1/openapi.json").json
    routes = app_routes(app)
    missing = routes - documented(doc)
    assert not missing, f"routes missing from zimg_queue/web/openapi.py OPERATIONS: {sorted(missing)}"
    extra = documented(doc) - routes - {("/rq/", "get")}
    assert not extra, f"documented but not served: {sorted(extra)}"
    assert ("/rq/", "get") in documented(doc), "the dashboard is mounted at /rq/ and documented there"


def test_under_a_prefix_in_another_app_only_its_routes_are_listed(settings):
    app = Flask(__name__)
    app.config.update(ZIMG_REDIS_URL=settings.redis_url)
    app.add_url_rule("/", "home", lambda: "my own page")
    ZimgQueue(app, url_prefix="/images/api")
    doc = app.test_client().get("/images/api/v1/openapi.json").json
    validate(doc)
    assert doc["servers"] == [{"url": "/images/api"}]
    ours = {r for r in app_routes(app, "/images/api") if r != ("/", "get")} - {("/images/api/", "get")}
    assert documented(doc) == {(p, m) for p, m in ours if not p.startswith("/images")}
    assert ("/", "get") not in documented(doc), "the app's own page is not ours to document"


def test_every_status_a_route_answers_is_documented():
    doc = document()
    create = doc["paths"]["/v1/jobs"]["post"]["responses"]
    assert {"202", "400", "401", "403", "408", "409", "413", "415", "429", "503"} <= set(create)
    assert "Retry-After" in create["429"]["headers"] and "Location" in create["202"]["headers"]
    assert "WWW-Authenticate" in create["401"]["headers"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            if operation.get("security") == []:
                continue
            assert "401" in codes, (path, method)
            if path not in ("/", "/v1/openapi.json", "/rq/"):
                assert "503" in codes, f"{method} {path} reads Redis: 503 when it is down"
    assert "304" in doc["paths"]["/v1/jobs/{job_id}/image"]["get"]["responses"]
    assert doc["paths"]["/healthz"]["get"]["security"] == []


def test_security_schemes_are_the_bearer_token_and_the_dashboards_basic_login():
    doc = document(dashboard="/rq/")
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["basic"] == {**schemes["basic"], "type": "http", "scheme": "basic"}
    assert doc["paths"]["/rq/"]["get"]["security"] == [{"basic": []}]


def test_the_request_schema_is_the_models_schema():
    body = document()["components"]["schemas"]["JobRequest"]
    plain = json_schema()
    assert {k: v for k, v in body["properties"].items() if k in plain["properties"]} == plain["properties"]
    assert set(body["properties"]) - set(plain["properties"]) == set(JobSubmission.model_fields)
    assert body["additionalProperties"] is False
    assert body["properties"]["priority"]["enum"] == list(PRIORITIES)


def test_configured_presets_and_watermarks_are_the_enums(web_app, tmp_path, monkeypatch):
    """Changes a setting (ZIMG_PRESETS, read by the producer from the environment); the twin below is the default."""
    (tmp_path / "logo.png").write_bytes(b"not read here")
    presets = tmp_path / "presets.toml"
    presets.write_text('[watermarks]\nbrand = "logo.png"\n[presets.main]\nprompt = "a {thing}"\n')
    monkeypatch.setenv("ZIMG_PRESETS", str(presets))
    doc = web_app().test_client().get("/v1/openapi.json").json
    schemas = doc["components"]["schemas"]
    assert schemas["JobOptions"]["properties"]["preset"]["anyOf"][0]["enum"] == ["main"]
    assert schemas["Watermark"]["properties"]["name"]["enum"] == ["brand"]
    monkeypatch.delenv("ZIMG_PRESETS")
    plain = web_app().test_client().get("/v1/openapi.json").json["components"]["schemas"]
    assert plain["JobOptions"]["properties"]["preset"]["anyOf"][0]["enum"] == []  # none configured (shipped default)
    assert "enum" not in plain["Watermark"]["properties"]["name"]


def test_the_webhook_payload_is_documented_as_openapi_3_1_webhooks():
    hook = document()["webhooks"]["jobEnded"]["post"]
    assert hook["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobState"}
    assert {p["name"] for p in hook["parameters"]} == {"webhook-id", "webhook-timestamp", "webhook-signature"}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


@pytest.mark.parametrize("doc", [document(), upstream_document()], ids=["api", "inference"])
def test_every_reference_resolves(doc):
    """openapi-spec-validator does not follow every $ref; a dangling one would break generated clients."""
    for ref in set(_refs(doc)):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]


def test_every_operation_has_a_unique_id():
    ids = [operation["operationId"] for operation in OPERATIONS.values()]
    assert len(ids) == len(set(ids))


def test_real_answers_of_a_real_job_match_the_document(stack, web_app, producer):
    """A sim inference server and a real worker make two images; every answer is checked against its schema."""
    client = web_app().test_client()
    doc = client.get("/v1/openapi.json").json
    bodies = [
        {"prompt": "a lighthouse", "width": 128, "height": 64, "seed": 3},
        {
            "prompt": "a lighthouse",
            "width": 128,
            "height": 64,
            "seed": 4,
            "options": {"postprocess": {"format": "jpeg", "thumbnail": 32}},
        },
    ]
    for body in bodies:
        conforms(doc, "JobRequest", body)
        created = client.post("/v1/jobs", json=body)
        assert created.status_code == 202, created.json
        conforms(doc, "JobCreated", created.json)
        status = client.get(f"/v1/jobs/{created.json['id']}?wait=30").json
        assert status["status"] == "finished", status
        conforms(doc, "JobStatus", status)
        # What a webhook receives: workers.webhooks.deliver POSTs job_status() of the ended job.
        conforms(doc, "JobState", job_status(producer.fetch(created.json["id"])))
    assert {f["role"] for f in status["result"]["files"]} == {"final", "thumbnail", "original"}
    conforms(doc, "Queues", client.get("/v1/queues").json)
    health = client.get("/healthz")
    conforms(doc, "Health", health.json)
    for resp in (client.get("/v1/jobs/nope"), client.post("/v1/jobs", json={"prompt": ""})):
        assert resp.status_code in (400, 404)
        conforms(doc, "ErrorBody", resp.json)


@pytest.mark.parametrize("name", ["GenerateRequest", "JobOptions", "JobStatus", "JobResult", "ErrorBody"])
def test_each_model_is_a_component(name):
    assert name in document()["components"]["schemas"]


def test_error_answers_match_the_document(web_app):
    """Each error a client can provoke on POST /v1/jobs is documented for it, with a body the ErrorBody schema takes.

    The rate limit is set to 2 per minute here so a 429 comes quickly (the shipped 600/60 is tested in test_web_api).
    """
    client = web_app(ZIMG_RATE_LIMIT="2/60", ZIMG_MAX_BODY_BYTES="1000").test_client()
    rate_window_with_room(60)
    doc = client.get("/v1/openapi.json").json
    documented_codes = doc["paths"]["/v1/jobs"]["post"]["responses"]
    good = {"prompt": "a cat", "seed": 1, "idempotency_key": "k-1"}
    answers = [
        client.post("/v1/jobs", json=good),
        client.post("/v1/jobs", json={**good, "seed": 2}),  # 409: the key names another body
        client.post("/v1/jobs", data="prompt=a", content_type="application/x-www-form-urlencoded"),  # 415
        client.post("/v1/jobs", data=b'{"prompt": "' + b"x" * 2000 + b'"}', content_type="application/json"),  # 413
        client.post("/v1/jobs", json={"prompt": ""}),  # 400, or 429 once the window is spent
        client.post("/v1/jobs", json={"prompt": "a dog"}),
    ]
    codes = [r.status_code for r in answers]
    assert codes[0] == 202 and {409, 415, 413, 429} <= set(codes), codes
    for resp in answers[1:]:
        assert str(resp.status_code) in documented_codes, resp.status_code
        conforms(doc, "ErrorBody", resp.json)
        for header in documented_codes[str(resp.status_code)].get("headers", {}):
            assert header in resp.headers, (resp.status_code, header)


def test_limits_no_keyword_can_state_are_said_in_words(web_app):
    """Changes two settings (a pixel budget and a blocklist); the served default is checked in the other tests."""
    doc = web_app(ZIMG_MAX_PIXELS="1048576", ZIMG_PROMPT_BLOCKLIST="gore").test_client().get("/v1/openapi.json").json
    props = doc["components"]["schemas"]["JobRequest"]["properties"]
    assert "at most 1048576" in props["width"]["description"] and "blocklist" in props["prompt"]["description"]
    assert "gore" not in str(doc), "the blocklist itself is not published"
