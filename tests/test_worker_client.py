"""What a worker sends the inference server and how it reads each kind of answer.

The inference server here is a scripted stand-in (a real HTTP server in this process),
because the point is the worker: the headers it sends, a 503 it waits out, a 500 or an
empty image it retries, a cancel it passes on. The workers are real processes on the
shipped defaults (retry intervals 1, 4, 16 s; outage budget 600 s).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import Processes, wait_until
from PIL import Image

from zimg_queue.queue import Producer
from zimg_queue.redis_server import free_port

TOKEN = "worker-test-token"


def _png(width: int = 64, height: int = 64) -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    at: float


@dataclass
class Stub:
    """Answers ``POST /v1/generate`` from ``script`` (then ``"ok"``); records every call.

    Script items: ``"ok"``, ``"empty"``, ``"500"``, ``"503"`` (with ``Retry-After: 1``), ``"hold"``
    (answer nothing until a ``DELETE /v1/requests/<id>`` arrives, or 30 s).
    """

    url: str = ""
    script: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def posts(self) -> list[Call]:
        return [c for c in self.calls if c.method == "POST"]


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _record(self) -> None:
            state.calls.append(Call(self.command, self.path, dict(self.headers.items()), time.time()))

        def _answer(self, code: int, body: dict | None = None, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/healthz":
                return self._answer(200, {"status": "ok"})
            return self._answer(404, {"detail": "no request in progress with that id"})

        def do_DELETE(self) -> None:  # noqa: N802
            self._record()
            state.cancelled.set()
            self._answer(204)

        def do_POST(self) -> None:  # noqa: N802
            self._record()
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            what = state.script.pop(0) if state.script else "ok"
            if what == "503":
                return self._answer(503, {"detail": "queue full"}, {"Retry-After": "1"})
            if what == "500":
                return self._answer(500, {"detail": "generation failed: RuntimeError: boom"})
            if what == "hold":
                state.cancelled.wait(30)
                return self._answer(503, {"detail": "request was cancelled"})
            image = "" if what == "empty" else _png()
            headers = {"X-Zimg-Backend": "stub", "X-Zimg-Batch-Id": "b-1", "X-Zimg-Batch-Size": "3"}
            return self._answer(200, {"image": image}, headers)

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def _log_events(proc, event: str) -> list[dict[str, Any]]:
    """The worker's structured log lines (JSON, since its stderr is a file) for ``event``."""
    out = []
    for line in proc.output().splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                out.append(record)
    return out


def test_worker_sends_the_token_request_id_job_id_and_deadline(procs: Processes, producer: Producer, stub: Stub):
    worker = procs.worker(zimg_inference_url=stub.url, zimg_inference_token=TOKEN)
    from_web = producer.enqueue("a cat in a hat", width=64, height=64, meta={"request_id": "req-abc123"})
    plain = producer.enqueue("a dog in a hat", width=64, height=64)
    sent = time.time()
    for job_id in (from_web, plain):
        status = producer.wait(job_id, timeout=30)
        assert status["status"] == "finished", status
        assert status["result"]["batch_size"] == 3 and status["result"]["backend"] == "stub"
    first, second = stub.posts()
    for call, job_id, request_id in ((first, from_web, "req-abc123"), (second, plain, plain)):
        assert call.headers["Authorization"] == f"Bearer {TOKEN}"
        assert call.headers["X-Request-Id"] == request_id
        assert call.headers["X-Zimg-Job-Id"] == job_id
        deadline = float(call.headers["X-Zimg-Deadline"])
        assert sent + 300 - 60 < deadline < time.time() + 300 + 1  # now + the 300 s read timeout
    # One structured line per ended job, with what operators graph, and no prompt text.
    lines = wait_until(lambda: len(ended := _log_events(worker, "job_finished")) == 2 and ended, timeout=10)
    by_id = {line["job_id"]: line for line in lines}
    assert by_id[from_web]["status"] == "finished" and by_id[from_web]["batch_size"] == 3
    assert by_id[from_web]["attempt"] == 1 and by_id[from_web]["cache_hit"] is False
    assert by_id[from_web]["backend"] == "stub" and by_id[from_web]["queue"] == "zimg-normal"
    assert {"queued_s", "inference_s", "total_s"} <= set(by_id[from_web])
    assert "a cat in a hat" not in worker.output() and "a dog in a hat" not in worker.output()


def test_a_busy_server_is_waited_out_without_spending_a_retry(procs: Processes, producer: Producer, stub: Stub):
    """503 with ``Retry-After: 1`` three times: the job waits (its status says so), then finishes, no attempt spent."""
    stub.script = ["503", "503", "503"]
    procs.worker(zimg_inference_url=stub.url)
    job_id = producer.enqueue("busy", width=64, height=64)
    stage = wait_until(lambda: producer.status(job_id)["progress"].get("stage") == "waiting_for_inference_server")
    assert stage
    status = producer.wait(job_id, timeout=60)
    gaps = [b.at - a.at for a, b in zip(stub.posts(), stub.posts()[1:])]
    print(f"\n503 busy x3: gaps between the worker's calls {[round(g, 2) for g in gaps]} s (Retry-After: 1)")
    assert status["status"] == "finished", status
    assert status["attempts"] == [], "a busy server must not cost the job a retry"
    assert len(stub.posts()) == 4 and all(g >= 0.9 for g in gaps)  # Retry-After is honoured


def test_500_and_an_empty_image_still_use_the_retry_policy(procs: Processes, producer: Producer, stub: Stub):
    """A live server's own errors are the job's attempts (shipped intervals: 1 s, then 4 s, jittered)."""
    stub.script = ["empty", "500"]
    procs.worker(zimg_inference_url=stub.url)
    status = producer.wait(producer.enqueue("flaky", width=64, height=64), timeout=60)
    assert status["status"] == "finished", status
    errors = [a["error"] for a in status["attempts"]]
    assert len(errors) == 2 and "EmptyImage" in errors[0] and "answered 500" in errors[1], errors


def test_cancelling_a_job_in_flight_tells_the_inference_server(procs: Processes, producer: Producer, stub: Stub):
    stub.script = ["hold"]
    procs.worker(zimg_inference_url=stub.url, zimg_inference_token=TOKEN)
    job_id = producer.enqueue("never mind", width=64, height=64)
    wait_until(lambda: stub.posts(), timeout=30)
    producer.cancel(job_id)
    assert stub.cancelled.wait(15), "the worker never sent DELETE /v1/requests/<job id>"
    delete = next(c for c in stub.calls if c.method == "DELETE")
    assert delete.path == f"/v1/requests/{job_id}" and delete.headers["Authorization"] == f"Bearer {TOKEN}"
    final = producer.wait(job_id, timeout=30)
    assert final["status"] in ("stopped", "failed", "canceled"), final


def test_the_hosts_proxy_and_netrc_settings_do_not_reach_the_call_to_the_inference_server(
    procs: Processes, producer: Producer, stub: Stub, tmp_path
):
    """The inference server is a co-located service: ``HTTP_PROXY`` (set for the host's outbound traffic, with no
    ``NO_PROXY``) must not route the worker's calls through a proxy, nor a ``~/.netrc`` entry replace its token.

    Before, requests' ``trust_env`` applied both: the proxy (here a port nobody listens on) made every call an
    outage, and the netrc entry turned the bearer token into a Basic login the server refuses.
    """
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password elsewhere\n")
    netrc.chmod(0o600)
    proxy = f"http://127.0.0.1:{free_port()}"
    procs.worker(zimg_inference_url=stub.url, zimg_inference_token=TOKEN, http_proxy=proxy, netrc=str(netrc))
    job_id = producer.enqueue("a cat behind a proxy", width=64, height=64)
    status = producer.wait(job_id, timeout=20)
    assert status["status"] == "finished", status
    assert [c.headers["Authorization"] for c in stub.posts()] == [f"Bearer {TOKEN}"]


def test_zimg_up_gives_its_own_children_an_inference_token(settings):
    """With no ``ZIMG_INFERENCE_TOKEN``, ``zimg up`` makes one: its server requires it, its workers send it."""
    from zimg_queue.stack import Stack

    made = Stack(settings)
    token = made.env()["ZIMG_INFERENCE_TOKEN"]
    assert len(token) >= 32 and made.env()["ZIMG_INFERENCE_TOKEN"] == token  # one per stack, for every child
    assert Stack(settings).inference_token != token  # random, not a constant
    assert Stack(settings.with_(inference_token="given")).env()["ZIMG_INFERENCE_TOKEN"] == "given"
