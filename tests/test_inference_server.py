"""The inference server's HTTP contract (the upstream ``POST /v1/generate``), against a real process."""

from __future__ import annotations

import base64
import io

import requests
from PIL import Image

GOOD = {"prompt": "a cat", "width": 128, "height": 64, "seed": 5}


def post(server, body, **kw) -> requests.Response:
    return requests.post(f"{server.url}/v1/generate", json=body, timeout=30, **kw)


def test_generate_answers_base64_of_the_asked_size_and_names_the_simulator(procs):
    server = procs.inference(latency_a="0", latency_b="0")
    resp = post(server, {**GOOD, "output_format": "jpeg"})
    assert resp.status_code == 200 and resp.headers["X-Zimg-Backend"] == "sim"
    body = resp.json()
    assert body["backend"] == "sim" and body["seed"] == 5 and body["batch_size"] == 1
    with Image.open(io.BytesIO(base64.b64decode(body["image"]))) as image:
        assert image.size == (128, 64) and image.format == "JPEG"
    health = requests.get(f"{server.url}/healthz", timeout=5).json()
    assert health["backend"] == "sim" and health["simulator"] is True and health["loaded"] is True


def test_the_same_request_gives_the_same_bytes_and_another_seed_other_bytes(procs):
    server = procs.inference(latency_a="0", latency_b="0")
    a, b = (post(server, GOOD).json()["image"] for _ in range(2))
    assert a == b
    assert post(server, {**GOOD, "seed": 6}).json()["image"] != a


def test_bad_input_is_422_naming_the_field_like_fastapi(procs):
    server = procs.inference(latency_a="0", latency_b="0")
    for body, field in (
        ({**GOOD, "width": 100}, "width"),
        ({**GOOD, "guidance_scale": 5.0}, "guidance_scale"),
        ({**GOOD, "output_format": "webp"}, "output_format"),  # the upstream contract is png or jpeg
        ({"width": 64}, "prompt"),
    ):
        resp = post(server, body)
        assert resp.status_code == 422, body
        assert resp.headers["X-Zimg-Backend"] == "sim"
        assert [d["loc"] for d in resp.json()["detail"]] == [["body", field]]
    big = b'{"prompt": "' + b"x" * 70_000 + b'"}'
    resp = requests.post(
        f"{server.url}/v1/generate", data=big, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert resp.status_code == 413


def test_out_of_memory_answers_500_with_the_upstream_detail(procs):
    server = procs.inference(latency_a="0", latency_b="0", oom_pixels=str(64 * 64))
    resp = post(server, {**GOOD, "width": 128, "height": 128})
    assert resp.status_code == 500 and resp.json()["detail"].startswith("CUDA out of memory")


def test_progress_is_404_for_an_unknown_request(procs):
    server = procs.inference(latency_a="0", latency_b="0")
    assert requests.get(f"{server.url}/v1/progress/nope", timeout=5).status_code == 404


def test_a_configured_token_guards_everything_but_healthz(procs):
    server = procs.inference(latency_a="0", latency_b="0", env={"ZIMG_INFERENCE_TOKEN": "s3cret"})
    assert post(server, GOOD).status_code == 401
    assert post(server, GOOD, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert post(server, GOOD, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
