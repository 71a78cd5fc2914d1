"""examples/flask_app.py: a real Flask app on the extension enqueues from its view and shows the finished image."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest

from tests.conftest import ROOT


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("zimg_example_app", ROOT / "examples" / "flask_app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example(settings):
    app = load_example().create_app(
        {
            "ZIMG_REDIS_URL": settings.redis_url,
            "ZIMG_INFERENCE_URL": settings.inference_url,
            "ZIMG_IMAGE_DIR": str(settings.images_path),
            "ZIMG_API_TOKEN": "",
        }
    )
    return app.test_client()


def test_the_page_has_the_form_and_follows_the_events_route(example):
    page = example.get("/").get_data(as_text=True)
    assert '<form id="form"' in page and 'id="prompt"' in page and "/generate" in page
    assert 'new EventSource(job.urls.get + "/events")' in page and "?wait=" not in page  # live, no polling


def test_bad_input_is_400_with_the_fields(example, redis_conn):
    r = example.post("/generate", json={"prompt": "", "width": 100, "height": 128})
    assert r.status_code == 400 and {e["field"] for e in r.json["errors"]} == {"prompt", "width"}
    assert redis_conn.llen("rq:queue:zimg-normal") == 0


def test_enqueues_from_the_view_and_shows_a_finished_image(stack, example):
    r = example.post("/generate", json={"prompt": "a red kite over a beach", "width": 128, "height": 128})
    assert r.status_code == 202, r.json
    assert r.json["urls"]["get"] == f"/api/v1/jobs/{r.json['id']}"
    status = example.get(f"{r.json['urls']['get']}?wait=30").json
    assert status["status"] == "finished", status
    assert status["result"]["image_url"] == f"/api/v1/jobs/{r.json['id']}/image"
    image = example.get(status["result"]["image_url"])
    assert image.status_code == 200 and image.mimetype == "image/png" and image.data[:4] == b"\x89PNG"


def test_a_plain_form_post_works_without_javascript(stack, example):
    r = example.post("/generate", data={"prompt": "a boat", "size": "256"})
    assert r.status_code == 202
    status = example.get(f"{r.json['urls']['get']}?wait=30").json
    assert status["status"] == "finished" and status["result"]["width"] == 256


def test_a_form_post_from_another_site_is_refused(example, redis_conn):
    r = example.post("/generate", data={"prompt": "a boat", "size": "256"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and r.json["error"] == "forbidden_origin"
    assert redis_conn.llen("rq:queue:zimg-normal") == 0
