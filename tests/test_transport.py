"""What reaches ``zimg web`` on the wire: codings, truncated and stalled uploads, nesting (issue 12, point 4).

Raw sockets against real ``zimg web`` processes (gunicorn, the default, and waitress), because
these requests never survive a polite HTTP client: a body cut short, a coding nobody asked
for, an upload that stops half-way.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import ROOT

VALID = b'{"prompt": "a cat on a windowsill", "width": 64, "height": 64, "seed": 5}'


def raw(url: str, request: bytes, *, close_write: bool = False, timeout: float = 10) -> int | None:
    """Send ``request`` bytes as they are; the status code of the answer, or ``None`` if the server sent none."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    if not answer.startswith(b"HTTP/1."):
        return None
    return int(answer.split(b" ", 2)[1])


def post(headers: str, body: bytes = b"") -> bytes:
    return f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode() + body


def jobs(redis_conn) -> int:
    return sum(1 for _ in redis_conn.scan_iter("rq:job:*"))


def chunked(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


CODINGS = [
    ("Transfer-Encoding: gzip, chunked\r\nContent-Type: application/json\r\n", chunked(VALID)),
    ("Transfer-Encoding: deflate, chunked\r\nContent-Type: application/json\r\n", chunked(VALID)),
    ("Transfer-Encoding: foo, chunked\r\nContent-Type: application/json\r\n", chunked(VALID)),
    ("Transfer-Encoding: gzip\r\nContent-Type: application/json\r\n", VALID),
    ("Transfer-Encoding: x-unknown\r\nContent-Type: application/json\r\n", VALID),
    (f"Content-Encoding: gzip\r\nContent-Type: application/json\r\nContent-Length: {len(VALID)}\r\n", VALID),
    (f"Content-Encoding: br\r\nContent-Type: application/json\r\nContent-Length: {len(VALID)}\r\n", VALID),
]


@pytest.mark.parametrize("server", ["gunicorn", "waitress"])
def test_unsupported_transfer_and_content_codings_are_4xx_and_make_no_job(web, redis_conn, server):
    proc = web("--server", server)
    codes = [raw(proc.url, post(headers, body), close_write=True) for headers, body in CODINGS]
    assert all(code is not None and 400 <= code < 500 for code in codes), list(zip(CODINGS, codes))
    assert jobs(redis_conn) == 0
    ok = post(f"Content-Type: application/json\r\nContent-Length: {len(VALID)}\r\n", VALID)
    assert raw(proc.url, ok) == 202 and jobs(redis_conn) == 1  # the same body, plainly sent, is fine


@pytest.mark.parametrize("server", ["gunicorn", "waitress"])
def test_a_body_shorter_than_its_content_length_makes_no_job(web, redis_conn, server):
    """The client announces 4,000 bytes, sends a valid 69-byte JSON object and closes: never a job."""
    proc = web("--server", server)
    code = raw(proc.url, post("Content-Type: application/json\r\nContent-Length: 4000\r\n", VALID), close_write=True)
    assert code in (400, None), code  # waitress waits for the rest and drops the connection: no answer
    if server == "gunicorn":
        assert code == 400
    time.sleep(0.5)  # a job would have been enqueued by now
    assert jobs(redis_conn) == 0


def test_a_short_body_is_400_naming_the_body_in_process(web_app, redis_conn):
    """Any WSGI server that passes a short body through (gunicorn marks input terminated) gets the same check."""
    client = web_app().test_client()
    environ = {"wsgi.input_terminated": True, "CONTENT_LENGTH": "4000"}
    r = client.post("/v1/jobs", data=VALID, content_type="application/json", environ_overrides=environ)
    assert r.status_code == 400 and r.json["errors"][0]["field"] == "body" and "4000" in r.json["message"]
    assert jobs(redis_conn) == 0


def stall(url: str) -> socket.socket:
    """A connection that sent a request head and the first bytes of its body, then stopped."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(post("Content-Type: application/json\r\nContent-Length: 1000\r\n", b'{"prompt": "'))
    return sock


def probes_answered(url: str, probes: int = 5) -> int:
    """How many of ``probes`` sequential ``/healthz`` probes got an answer (200, or 503 for a dependency down)."""
    answered = 0
    for _ in range(probes):
        try:
            answered += requests.get(f"{url}/healthz", timeout=5).status_code in (200, 503)
        except requests.RequestException:
            pass
    return answered


def test_stalled_uploads_do_not_starve_healthz(web):
    """More stalled uploads than threads (gunicorn, 1 process x 8 threads, shipped body timeout): probes answer."""
    proc = web()
    stalled = [stall(proc.url) for _ in range(12)]
    try:
        time.sleep(0.5)  # every stall has reached the server
        assert probes_answered(proc.url) == 5
    finally:
        for sock in stalled:
            sock.close()


def test_a_stalled_upload_is_answered_408_after_the_body_timeout(web, redis_conn):
    """Changes ZIMG_WEB_BODY_TIMEOUT to 1 s so the test is short (the twin above runs on the shipped 10 s)."""
    proc = web(ZIMG_WEB_BODY_TIMEOUT="1")
    sock = stall(proc.url)
    with sock:
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert jobs(redis_conn) == 0


def test_a_slow_but_steady_upload_still_succeeds(web, redis_conn):
    proc = web()
    host, port = proc.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(post(f"Content-Type: application/json\r\nContent-Length: {len(VALID)}\r\n"))
        for i in range(0, len(VALID), 20):
            time.sleep(0.1)
            sock.sendall(VALID[i : i + 20])
        assert sock.recv(4096).startswith(b"HTTP/1.1 202")
    assert jobs(redis_conn) == 1


@pytest.mark.parametrize("depth", [33, 1_000, 40_000])
def test_deeply_nested_json_is_400_never_a_5xx(web_app, redis_conn, depth):
    client = web_app(ZIMG_MAX_BODY_BYTES=300_000).test_client()
    for body in (
        b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}",
        b'{"options": ' + b'{"a":' * depth + b"1" + b"}" * depth + b"}",
    ):
        r = client.post("/v1/jobs", data=body, content_type="application/json")
        assert r.status_code == 400, (depth, r.status_code)
        assert r.json["errors"][0]["field"] == "body" and "nested too deeply" in r.json["message"]
    assert jobs(redis_conn) == 0


def test_shallow_json_with_brackets_in_strings_is_fine(web_app):
    client = web_app().test_client()
    body = {"prompt": "[[[[" * 40 + "{{{{" * 40, "width": 64, "height": 64}
    assert client.post("/v1/jobs", json=body).status_code == 202


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
def test_web_refuses_to_bind_beyond_loopback_without_a_token(procs, host):
    env = procs.env()
    env.pop("ZIMG_API_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "zimg_queue.cli", "web", "--host", host, "--port", "1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "refusing" in line]
    assert len(lines) == 1 and "ZIMG_API_TOKEN" in lines[0] and "ZIMG_ALLOW_PUBLIC_BIND" in lines[0]
    assert "Traceback" not in done.stderr


def test_bind_check_lets_loopback_a_token_or_an_explicit_yes_through():
    from zimg_queue.bind import PublicBindRefused, check_bind, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("10.0.0.1")
    common = {"token_setting": "ZIMG_API_TOKEN", "server": "zimg web"}
    check_bind("127.0.0.1", token=None, allow_public=False, **common)
    check_bind("0.0.0.0", token="t", allow_public=False, **common)
    check_bind("0.0.0.0", token=None, allow_public=True, **common)
    with pytest.raises(PublicBindRefused):
        check_bind("0.0.0.0", token=None, allow_public=False, **common)


def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (head and Content-Length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head


def test_stalled_requests_on_kept_alive_connections_do_not_starve_healthz(web):
    """Shipped settings (keep-alive on): each connection's second request stalls; probes still answer."""
    proc = web()
    host, port = proc.url.removeprefix("http://").split(":")
    stalled = []
    try:
        for _ in range(12):
            sock = socket.create_connection((host, int(port)), timeout=30)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert b"keep-alive" in _read_response(sock).lower()
            sock.sendall(post("Content-Type: application/json\r\nContent-Length: 1000\r\n", b'{"prompt": "'))
            stalled.append(sock)
        time.sleep(0.5)
        assert probes_answered(proc.url) == 5
    finally:
        for sock in stalled:
            sock.close()


def test_a_kept_alive_connection_serves_its_request_cap_then_closes(web):
    """Shipped settings: connections are kept alive (a client saves a TCP handshake and a trip through
    gunicorn's accept per request) for ``ZIMG_WEB_KEEPALIVE_REQUESTS`` (20) requests; the last answer says
    ``Connection: close`` and the server closes, so the client reconnects to whichever process accepts first."""
    from zimg_queue.settings import Settings

    cap = Settings().web_keepalive_requests
    proc = web()
    host, port = proc.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        heads = []
        for _ in range(cap):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            heads.append(_read_response(sock).lower())
        sock.settimeout(5)
        assert sock.recv(1) == b""  # closed by the server
    assert all(b"connection: keep-alive" in head for head in heads[:-1])
    assert b"connection: close" in heads[-1]
