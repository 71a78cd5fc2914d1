"""The inference server's HTTP contract (the upstream ``POST /v1/generate``), against a real process."""

from __future__ import annotations

import base64
import gzip
import io
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from conftest import Proc, wait_until
from PIL import Image

from zimg_queue.redis_server import free_port

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


# --- issue 14: backpressure, deadlines, cancellation, single flight, batch headers --------------------------


def in_background(fn, *args):
    pool = ThreadPoolExecutor(1)
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return future


def depth(server) -> int:
    return requests.get(f"{server.url}/healthz", timeout=5).json()["batcher"]["depth"]


def hold_the_gpu(server, seconds_marker: int = 999):
    """Start a request the sim works on for its latency, and wait until it runs (so what follows queues)."""
    busy = in_background(post, server, {**GOOD, "seed": seconds_marker, "width": 64})
    wait_until(lambda: requests.get(f"{server.url}/healthz", timeout=5).json()["batcher"]["calls"] >= 1)
    return busy


def test_a_full_queue_answers_503_with_retry_after(procs):
    server = procs.inference(latency_a="0.6", latency_b="0", extra_args=["--max-batch", "1", "--max-queue", "1"])
    busy = hold_the_gpu(server)
    queued = in_background(post, server, {**GOOD, "seed": 1})
    wait_until(lambda: depth(server) == 1)
    refused = post(server, {**GOOD, "seed": 2})
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
    assert "max-queue" in refused.json()["detail"]
    assert busy.result().status_code == queued.result().status_code == 200
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    assert 'zimg_inference_requests_total{outcome="busy"} 1.0' in metrics


def test_a_request_whose_deadline_passed_never_reaches_the_gpu(procs):
    server = procs.inference(latency_a="0.6", latency_b="0", extra_args=["--max-batch", "1"])
    late = post(server, GOOD, headers={"X-Zimg-Deadline": str(time.time() - 1)})
    assert late.status_code == 504 and "deadline" in late.json()["detail"]
    busy = hold_the_gpu(server)
    soon = post(server, {**GOOD, "seed": 1}, headers={"X-Zimg-Deadline": str(time.time() + 0.2)})
    assert soon.status_code == 504
    assert busy.result().status_code == 200
    stats = requests.get(f"{server.url}/healthz", timeout=5).json()["batcher"]
    assert stats["images"] == 1 and stats["expired"] == 2  # only the request that held the GPU ran
    bad = post(server, GOOD, headers={"X-Zimg-Deadline": "tomorrow"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["header", "X-Zimg-Deadline"]


def test_delete_drops_a_queued_request_by_job_id(procs):
    server = procs.inference(latency_a="0.6", latency_b="0", extra_args=["--max-batch", "1"])
    busy = hold_the_gpu(server)
    in_background(post, server, {**GOOD, "seed": 1})
    victim = in_background(
        lambda: requests.post(
            f"{server.url}/v1/generate", json={**GOOD, "seed": 3}, headers={"X-Zimg-Job-Id": "job-3"}, timeout=30
        )
    )
    wait_until(lambda: depth(server) == 2)
    assert requests.delete(f"{server.url}/v1/requests/job-3", timeout=5).status_code == 204
    assert victim.result().status_code == 409
    assert requests.delete(f"{server.url}/v1/requests/job-3", timeout=5).status_code == 404
    assert requests.delete(f"{server.url}/v1/requests/unknown", timeout=5).status_code == 404
    assert busy.result().status_code == 200
    wait_until(lambda: requests.get(f"{server.url}/healthz", timeout=5).json()["batcher"]["images"] == 2)
    assert requests.get(f"{server.url}/healthz", timeout=5).json()["batcher"]["cancelled"] == 1


def test_identical_requests_in_flight_are_computed_once_and_answers_name_their_batch(procs):
    server = procs.inference(latency_a="0.5", latency_b="0")
    busy = hold_the_gpu(server)
    twins = [in_background(post, server, {**GOOD, "seed": 7}) for _ in range(2)]
    jpeg = in_background(post, server, {**GOOD, "seed": 7, "output_format": "jpeg"})
    answers = [t.result() for t in twins] + [jpeg.result()]
    assert busy.result().status_code == 200
    assert all(a.status_code == 200 for a in answers)
    assert answers[0].json()["image"] == answers[1].json()["image"]
    assert len({a.headers["X-Zimg-Batch-Id"] for a in answers}) == 1
    assert {a.headers["X-Zimg-Batch-Size"] for a in answers} == {"1"}
    stats = requests.get(f"{server.url}/healthz", timeout=5).json()["batcher"]
    assert stats["images"] == 2 and stats["deduplicated"] == 2


def test_metrics_say_the_inference_server_measured_them(procs):
    server = procs.inference(latency_a="0", latency_b="0")
    assert post(server, GOOD).status_code == 200
    assert post(server, {**GOOD, "width": 100}).status_code == 422
    text = requests.get(f"{server.url}/metrics", timeout=5).text
    for name in ("zimg_inference_requests_total", "zimg_inference_batch_images", "zimg_inference_queue_length",
                 "zimg_gpu_busy_ratio"):  # fmt: skip
        help_line = next(line for line in text.splitlines() if line.startswith(f"# HELP {name} "))
        assert "measured by the inference server" in help_line
    assert 'zimg_inference_requests_total{outcome="ok"} 1.0' in text
    assert 'zimg_inference_requests_total{outcome="4xx"} 1.0' in text
    assert "zimg_inference_batch_images_count 1.0" in text
    ratio = float(next(line.split()[1] for line in text.splitlines() if line.startswith("zimg_gpu_busy_ratio ")))
    assert 0 <= ratio <= 1


# --- issue 12: auth, binding, hostile bodies ----------------------------------------------------------------


def test_the_token_guards_generate_metrics_and_cancel_but_not_healthz(procs):
    server = procs.inference(latency_a="0", latency_b="0", env={"ZIMG_INFERENCE_TOKEN": "s3cret"})
    auth = {"Authorization": "Bearer s3cret"}
    assert requests.get(f"{server.url}/metrics", timeout=5).status_code == 401
    assert requests.get(f"{server.url}/metrics", headers=auth, timeout=5).status_code == 200
    assert requests.delete(f"{server.url}/v1/requests/x", timeout=5).status_code == 401
    assert requests.delete(f"{server.url}/v1/requests/x", headers=auth, timeout=5).status_code == 404


def test_binding_beyond_loopback_without_a_token_refuses_to_start(procs, settings):
    port = free_port()
    args = [sys.executable, "-m", "zimg_queue.cli", "inference-server", "--host", "0.0.0.0", "--port", str(port)]
    refused = subprocess.run(args, env=procs.env(), capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "ZIMG_INFERENCE_TOKEN" in refused.stderr
    for env in ({"ZIMG_INFERENCE_TOKEN": "t"}, {"ZIMG_ALLOW_PUBLIC_BIND": "true"}):
        server = procs.zimg("inference", *args[3:], url=f"http://127.0.0.1:{port}", env=env)
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
        server.stop()


def raw_http(server, head: bytes, body: bytes = b"", *, half_close: bool = False) -> bytes:
    """Send bytes as they are (no client library fixes them up); the server's answer, or b"" if it hung up."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None


def test_hostile_bodies_get_4xx_never_5xx(procs):
    server = procs.inference(latency_a="0", latency_b="0")
    nested = b'{"prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    resp = requests.post(f"{server.url}/v1/generate", data=nested, timeout=10)
    assert resp.status_code == 400 and "nested" in resp.json()["detail"][0]["msg"]
    gzipped = requests.post(
        f"{server.url}/v1/generate", data=gzip.compress(b'{"prompt": "a"}'), headers={"Content-Encoding": "gzip"}
    )
    assert gzipped.status_code == 415 and "Content-Encoding" in gzipped.json()["detail"][0]["msg"]
    body = json.dumps(GOOD).encode()
    head = b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
    # waitress itself answers an unknown Transfer-Encoding, with 501 unless told otherwise.
    assert status_of(raw_http(server, head + b"Transfer-Encoding: gzip\r\n\r\n", body)) == 400
    before = requests.get(f"{server.url}/healthz", timeout=5).json()["batcher"]["images"]
    short = raw_http(server, head + f"Content-Length: {len(body) + 100}\r\n\r\n".encode(), body, half_close=True)
    # waitress never hands a body shorter than its Content-Length to the app: no answer, and above all no image.
    assert status_of(short) in (None, 400)
    assert requests.get(f"{server.url}/healthz", timeout=5).json()["batcher"]["images"] == before
    assert status_of(raw_http(server, head + f"Content-Length: {len(body)}\r\n\r\n".encode(), body)) == 200


def test_a_body_shorter_than_its_content_length_is_400_in_the_app(procs):
    """Under another WSGI server the app itself must refuse a truncated body (waitress never passes one on)."""
    from workers.inference.app import create_app
    from workers.inference.backends.sim import SimBackend, SimConfig
    from workers.inference.batcher import Batcher

    batcher = Batcher(SimBackend(SimConfig(latency_a=0, latency_b=0)))
    try:
        client = create_app(batcher).test_client()
        body = json.dumps(GOOD).encode()
        resp = client.post(
            "/v1/generate", data=body, environ_overrides={"CONTENT_LENGTH": str(len(body) + 50)},
            content_type="application/json",
        )  # fmt: skip
        assert resp.status_code == 400 and "Content-Length" in resp.get_json()["detail"][0]["msg"]
        assert batcher.stats["images"] == 0
    finally:
        batcher.close()


FAILING_SERVER = """
import sys
from workers.inference.backends.sim import SimBackend
from workers.inference.server import serve
from zimg_queue.settings import Settings

class BrokenGpu(SimBackend):
    def generate(self, batch, progress=None):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

serve(Settings(), backend=BrokenGpu(), port=int(sys.argv[1]))
"""


def test_an_unrecoverable_cuda_error_makes_healthz_503_and_the_process_exit_non_zero(procs, tmp_path):
    port = free_port()
    server = Proc([sys.executable, "-c", FAILING_SERVER, str(port)], env=procs.env(), log=tmp_path / "broken.log",
                  url=f"http://127.0.0.1:{port}").start()  # fmt: skip
    procs.started.append(server)
    resp = post(server, GOOD)
    assert resp.status_code == 503 and "device failed" in resp.json()["detail"]
    health = requests.get(f"{server.url}/healthz", timeout=5)
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert server.popen.wait(timeout=30) == 3  # type: ignore[union-attr]


def test_stalled_uploads_do_not_starve_healthz(procs):
    """waitress buffers a body before a thread sees it: 40 clients that stop mid-upload hold no thread."""
    server = procs.inference(latency_a="0", latency_b="0")
    host, port = server.url.removeprefix("http://").split(":")
    head = b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    stalled = []
    try:
        for _ in range(40):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(head + b'{"prompt": "')
            stalled.append(sock)
        for _ in range(5):
            assert requests.get(f"{server.url}/healthz", timeout=2).status_code == 200
        assert post(server, GOOD).status_code == 200
    finally:
        for sock in stalled:
            sock.close()


def test_queue_and_pixel_budget_flags_reach_the_batcher(procs):
    """``--max-queue`` and ``--max-batch-pixels`` (and the defaults when they are absent)."""
    flags = ["--max-queue", "5", "--max-batch-pixels", "8192"]
    server = procs.inference(latency_a="0", latency_b="0", extra_args=flags)
    stats = requests.get(f"{server.url}/healthz", timeout=5).json()["batcher"]
    assert (stats["max_queue"], stats["max_batch_pixels"], stats["max_wait_ms"]) == (5, 8192, 0)
    default = procs.inference(free_port(), latency_a="0", latency_b="0")
    stats = requests.get(f"{default.url}/healthz", timeout=5).json()["batcher"]
    assert (stats["max_batch"], stats["max_queue"], stats["max_batch_pixels"]) == (8, 32, 0)
