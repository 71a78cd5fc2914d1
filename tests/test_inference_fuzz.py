"""Seeded fuzzing of the inference server's doors beyond the JSON fields (``test_fuzz.py`` covers those).

Headers (``Content-Encoding``, ``Transfer-Encoding``, ``X-Zimg-Deadline``, ``X-Zimg-Job-Id``,
``X-Request-Id``), JSON nested to any depth, and ``DELETE /v1/requests/<job id>`` with any id, against a
real ``zimg inference-server``: never a 5xx for client input, always a JSON ``detail``. The one 5xx that is
not a client error is 504 for a deadline that had already passed (the worker gave up: a retry may run it).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import requests
from conftest import Proc, start_fast_inference
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    derandomize=True, max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
GOOD = {"prompt": "a cat", "width": 64, "height": 64, "seed": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_fast_inference(tmp_path_factory.mktemp("inference-fuzz"))
    yield proc
    proc.stop()


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
deadlines = (
    st.sampled_from(["", "nan", "inf", "-inf", "1e309", "abc", "0x10", " 5 ", "1e12", "-1", "0"])
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | header_text
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Content-Encoding": st.sampled_from(["gzip", "br", "identity", "", "deflate, gzip", "IDENTITY"]) | header_text,
        "X-Zimg-Deadline": deadlines,
        "X-Zimg-Job-Id": header_text,
        "X-Request-Id": header_text,
    },
)


def nested(depth: int, kind: str) -> bytes:
    opening, closing = ("[", "]") if kind == "list" else ('{"a":', "}")
    return (opening * depth + "1" + closing * depth).encode()


bodies = (
    st.builds(lambda d, k: b'{"prompt": ' + nested(d, k) + b"}", st.integers(0, 3000), st.sampled_from(["list", "obj"]))
    | st.builds(nested, st.integers(0, 3000), st.sampled_from(["list", "obj"]))
    | st.just(json.dumps(GOOD).encode())
    | st.binary(max_size=200)
)


def check(resp: requests.Response, sent_deadline: str | None) -> None:
    event(f"HTTP {resp.status_code}")
    payload = resp.json()
    if resp.status_code == 504:  # the only 5xx allowed: a deadline that had passed before the GPU got to it
        assert sent_deadline is not None and "deadline" in payload["detail"]
        return
    assert resp.status_code < 500, (resp.status_code, resp.text[:300])
    if resp.status_code >= 400:
        assert payload["detail"]
    else:
        assert payload["image"]


@FUZZ
@given(headers, bodies)
def test_generate_never_answers_5xx_to_client_headers_or_bodies(server: Proc, head: dict, body: bytes) -> None:
    resp = requests.post(
        f"{server.url}/v1/generate", data=body, headers={"Content-Type": "application/json", **head}, timeout=30
    )
    check(resp, head.get("X-Zimg-Deadline"))
    if head.get("Content-Encoding", "").strip().lower() not in ("", "identity"):
        assert resp.status_code == 415


@FUZZ
@given(st.text(min_size=1, max_size=80))
def test_cancel_with_any_job_id_is_404_never_5xx(server: Proc, job_id: str) -> None:
    resp = requests.delete(f"{server.url}/v1/requests/{quote(job_id, safe='')}", timeout=10)
    event(f"HTTP {resp.status_code}")
    assert resp.status_code in (404, 405), resp.text[:200]  # 405: an id that is empty once decoded


@settings(derandomize=True, max_examples=30, deadline=None, database=None)
@given(st.sampled_from(["gzip", "chunked, gzip", "gzip, chunked, gzip", "compress", "deflate", "identity", "br"]))
def test_unsupported_transfer_encodings_are_400(server: Proc, encoding: str) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(GOOD).encode()
    head = (
        f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        f"Transfer-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        deadline = time.monotonic() + 10
        while (chunk := sock.recv(65536)) and time.monotonic() < deadline:
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
