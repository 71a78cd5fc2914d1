"""``InferencePool``: which server a request goes to when there are several, against real inference servers."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from workers.client import InferenceClient
from workers.errors import InferenceUnavailable
from workers.inference_pool import InferencePool, inference_client, servers_health, split_urls
from zimg_queue.redis_server import free_port

REQUEST = {"prompt": "a lighthouse", "width": 64, "height": 64, "seed": 1, "output_format": "png"}


def _served(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=5).text
    found = re.search(r'^zimg_inference_requests_total\{outcome="ok"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def busy_server() -> Iterator[str]:
    """A server that is up (``/healthz`` 200) but full: every generate gets 503 with Retry-After.

    A stand-in: the point here is where the pool sends the next request, not how a real server fills up.
    """

    class Busy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(200, b'{"status": "ok"}')

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer(503, b'{"detail": "queue full"}', {"Retry-After": "1"})

        def _answer(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_one_url_is_a_plain_client_and_a_list_is_a_pool():
    assert split_urls(" http://a:1/, http://b:2 ,http://a:1") == ["http://a:1", "http://b:2"]
    assert isinstance(inference_client("http://a:1"), InferenceClient)
    pool = inference_client("http://a:1,http://b:2")
    assert isinstance(pool, InferencePool) and pool.urls == ["http://a:1", "http://b:2"]


def test_dead_and_busy_servers_are_skipped_a_live_servers_error_is_not(procs, busy_server):
    good = procs.inference(free_port(), latency_a="0", latency_b="0")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused at once

    pool = InferencePool([dead, busy_server, good.url], cooldown=0.3)
    assert pool.generate(REQUEST, request_id="job-1").image_b64
    assert _served(good.url) == 1
    assert pool.in_rotation() == [1, 2]  # the dead one is out for its cool-down; the busy one is up, so it stays

    failing = procs.inference(free_port(), latency_a="0", latency_b="0", fail_rate="1")
    pool = InferencePool([failing.url, good.url])
    with pytest.raises(InferenceUnavailable, match="500"):  # a healthy server's own error: the retry policy's call
        pool.generate(REQUEST)
    assert _served(good.url) == 1


def test_a_server_back_after_its_cool_down_is_used_again(procs):
    port = free_port()
    other = procs.inference(free_port(), latency_a="0", latency_b="0")
    pool = InferencePool([f"http://127.0.0.1:{port}", other.url], cooldown=0.2)
    pool.generate(REQUEST)
    assert pool.in_rotation() == [1]
    home = procs.inference(port, latency_a="0", latency_b="0")  # the home server comes back
    time.sleep(0.3)
    assert pool.in_rotation() == [0, 1]  # one /healthz probe put it back
    pool.generate(REQUEST)
    assert _served(home.url) == 1


def test_all_down_raises_the_outage_and_health_lists_each(busy_server):
    dead = f"http://127.0.0.1:{free_port()}"
    pool = InferencePool([dead, f"http://127.0.0.1:{free_port()}"])
    with pytest.raises(InferenceUnavailable):
        pool.generate(REQUEST)
    assert pool.in_rotation() == [0, 1]  # everything is out: try them all, so the outage is seen as one
    check = servers_health(f"{dead},{busy_server}")
    assert check == {"ok": True, "servers": {dead: False, busy_server: True}}
    assert servers_health(dead)["ok"] is False
