"""The OpenAPI document is valid, lists exactly the API's routes, and its schema agrees with the validator."""

from __future__ import annotations

import re

import jsonschema
import pytest
from flask import Flask
from openapi_spec_validator import validate

from zimg_queue.request import json_schema
from zimg_queue.web import ZimgQueue
from zimg_queue.web.openapi import document


def test_the_document_is_valid_openapi_3_1(web_app):
    doc = web_app().test_client().get("/v1/openapi.json").json
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def _api_routes(app: Flask, prefix: str = "") -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("zimg_queue."):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)[len(prefix) :]
        routes |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


def _documented(doc: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item if method != "parameters"}


def test_the_document_lists_exactly_the_routes(web_app):
    app = web_app()
    assert _documented(document()) == _api_routes(app)


def test_under_a_prefix_the_server_url_carries_it(settings):
    app = Flask(__name__)
    app.config.update(ZIMG_REDIS_URL=settings.redis_url)
    ZimgQueue(app, url_prefix="/images/api")
    doc = app.test_client().get("/images/api/v1/openapi.json").json
    assert doc["servers"] == [{"url": "/images/api"}]
    assert _documented(doc) == _api_routes(app, "/images/api")


def test_the_request_schema_is_the_validators_schema():
    body = document()["components"]["schemas"]["JobRequest"]
    plain = json_schema()
    assert {k: v for k, v in body["properties"].items() if k in plain["properties"]} == plain["properties"]
    assert set(body["properties"]) - set(plain["properties"]) == {"priority", "idempotency_key", "options"}
    assert body["additionalProperties"] is False and body["required"] == ["prompt"]


@pytest.mark.parametrize(
    "payload",
    [
        {"prompt": "a cat"},
        {"prompt": "a cat", "width": 512, "height": 768, "seed": 3, "priority": "high", "idempotency_key": "k-1"},
        {"prompt": "a cat", "width": 500},
        {"prompt": "a cat", "guidance_scale": 1.5},
        {"prompt": "a cat", "output_format": "gif"},
        {"prompt": "a cat", "priority": "urgent"},
        {"prompt": "a cat", "idempotency_key": "a:b"},
        {"prompt": "a cat", "colour": "red"},
        {"width": 512},
    ],
)
def test_the_schema_and_the_server_agree(web_app, payload):
    schema = document()["components"]["schemas"]["JobRequest"]
    valid_by_schema = jsonschema.Draft202012Validator(schema).is_valid(payload)
    status = web_app().test_client().post("/v1/jobs", json=payload).status_code
    assert (status == 202) == valid_by_schema, (payload, status)
