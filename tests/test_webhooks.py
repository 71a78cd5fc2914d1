"""Signed webhooks: a real HTTP receiver on loopback checks Standard Webhooks signatures; failures are retried.

A receiver on loopback is exactly what the shipped defaults refuse (server-side request forgery), so the
tests that deliver to one set ``webhook_allow_private`` on the producer and the workers, saying so; the
tests at the end prove the refusal on the defaults, up front and after DNS.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import wait_until

from workers.webhooks import sign, verify
from zimg_queue.queue import Producer
from zimg_queue.request import ValidationError

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#: Worker environment for the tests whose receiver is on loopback (see the module docstring).
ALLOW = {"zimg_webhook_allow_private": "true"}


def test_signature_matches_the_standard_webhooks_test_vector():
    body = b'{"test": 2432232314}'
    assert sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


class Receiver:
    """An HTTP server thread recording every POST; answers ``fail_first`` 500s before 200s."""

    def __init__(self, fail_first: int = 0, host: str = "127.0.0.1"):
        self.calls: list[dict] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append({"headers": dict(self.headers), "body": body})
                self.send_response(500 if len(outer.calls) <= outer.fail_first else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(fail_first: int = 0, host: str = "127.0.0.1") -> Receiver:
        made.append(Receiver(fail_first, host))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def local_producer(redis_conn, settings) -> Producer:
    """Changes webhook_allow_private: the receiver is on loopback (the default's refusal is tested below)."""
    return Producer(redis_conn, settings.with_(webhook_allow_private=True))


def test_finished_job_posts_its_signed_status_and_a_failing_receiver_is_retried(procs, local_producer, receiver):
    producer = local_producer
    hook = receiver(fail_first=2)
    procs.inference(latency_a="0", latency_b="0")
    procs.worker(zimg_webhook_secret=SECRET, zimg_webhook_retry_intervals="0.2,0.2,0.2", **ALLOW)
    job_id = producer.enqueue("a kite", width=64, height=64, options={"webhook_url": hook.url})
    wait_until(lambda: len(hook.calls) >= 3, timeout=30)
    ids = {c["headers"]["webhook-id"] for c in hook.calls}
    assert len(ids) == 1, "retries keep the same webhook-id so receivers can drop duplicates"
    for call in hook.calls:
        assert verify(SECRET, call["headers"], call["body"])
        assert not verify("whsec_" + "QUFBQQ==", call["headers"], call["body"])
    payload = json.loads(hook.calls[-1]["body"])
    assert payload == producer.status(job_id)  # the same JSON as GET /v1/jobs/<id>
    assert payload["id"] == job_id and payload["status"] == "finished" and payload["result"]["path"]
    state = wait_until(lambda: producer.fetch(job_id).get_meta(refresh=True).get("webhook", {}).get("delivered"))
    assert state is True
    assert producer.fetch(job_id).meta["webhook"]["attempts"] == 3


def test_failed_job_posts_once_after_its_last_attempt(procs, local_producer, receiver):
    producer = local_producer
    hook = receiver()
    # A live server that answers 500: the job fails after its retries (an unreachable one is waited out instead).
    procs.inference(latency_a="0", latency_b="0", fail_rate="1")
    procs.worker(zimg_webhook_secret="plain-secret", **ALLOW)
    job_id = producer.enqueue("always 500", width=64, height=64, options={"webhook_url": hook.url})
    wait_until(lambda: hook.calls, timeout=60)
    final = producer.wait(job_id, timeout=30)
    payload = json.loads(hook.calls[0]["body"])
    assert payload["status"] == "failed" and "answered 500" in payload["error"]
    assert len(payload["attempts"]) == procs.settings.max_retries + 1 == len(final["attempts"])
    assert verify("plain-secret", hook.calls[0]["headers"], hook.calls[0]["body"])
    time.sleep(1)
    assert len(hook.calls) == 1, "earlier, retried attempts must not notify"


def test_webhook_url_must_be_http(producer: Producer):
    with pytest.raises(ValidationError, match="options.webhook_url"):
        producer.enqueue("x", options={"webhook_url": "gopher://example.com"})


def test_a_job_whose_worker_died_with_no_attempts_left_still_notifies(procs, redis_conn, settings, receiver):
    """RQ's abandoned-job cleanup runs the failure callback, so the lease sweeper's verdict is delivered too."""
    hook = receiver()
    producer = Producer(redis_conn, settings.with_(max_retries=0, webhook_allow_private=True))  # loopback receiver
    procs.inference(latency_a="30", latency_b="0")  # the job will still be waiting when its worker dies
    victim = procs.worker(zimg_lease_ttl="3", **ALLOW)
    job_id = producer.enqueue("doomed", width=64, height=64, options={"webhook_url": hook.url})
    wait_until(lambda: producer.status(job_id)["status"] == "started", timeout=30)
    victim.kill()
    procs.worker(zimg_lease_ttl="3", **ALLOW)
    wait_until(lambda: hook.calls, timeout=60)
    payload = json.loads(hook.calls[0]["body"])
    assert payload["id"] == job_id and payload["status"] == "failed"
    assert payload["error"].startswith("WorkerDied:")


# --- server-side request forgery: the shipped defaults refuse loopback, private and link-local targets ---------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:7860/v1/generate",
        "http://localhost/hook",
        "http://api.localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.5/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8000/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fe80::1]/hook",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_private_webhook_targets_are_refused_up_front_on_the_defaults(producer: Producer, redis_conn, url):
    with pytest.raises(ValidationError, match="options.webhook_url") as caught:
        producer.enqueue("x", width=64, height=64, options={"webhook_url": url})
    if not url.startswith("http://["):  # the schema takes no IPv6 literals at all; the others name the setting
        assert "ZIMG_WEBHOOK_ALLOW_PRIVATE" in str(caught.value)
    assert redis_conn.llen("rq:queue:zimg-normal") == 0


def test_private_webhook_targets_are_400_from_the_api(web_app):
    r = (
        web_app()
        .test_client()
        .post(
            "/v1/jobs", json={"prompt": "x", "width": 64, "height": 64, "options": {"webhook_url": "http://10.0.0.1/"}}
        )
    )
    assert r.status_code == 400 and r.json["errors"][0]["field"] == "options.webhook_url"


def test_public_targets_and_names_pass_the_up_front_check(producer: Producer):
    for url in ("https://hooks.example.com/zimg", "http://93.184.216.34/hook", "http://1.1.1.1:8443/x"):
        assert producer.enqueue("x", width=64, height=64, options={"webhook_url": url})


def test_is_public_judges_every_kind_of_address():
    from zimg_queue.webhook_targets import is_public

    assert all(is_public(a) for a in ("93.184.216.34", "1.1.1.1", "2606:4700::1111"))
    private = (
        "127.0.0.1",
        "10.0.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
        "255.255.255.255",
    )
    assert not any(is_public(a) for a in private)


def _private_name() -> tuple[str, str]:
    """A host name (not a literal) that resolves only to a non-public address of this machine."""
    import socket

    from zimg_queue.webhook_targets import is_public

    name = socket.gethostname()
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    except OSError:
        pytest.skip(f"this machine's host name {name!r} does not resolve")
    v4 = sorted(a for a in addresses if ":" not in a)
    if not v4 or any(is_public(a) for a in addresses):
        pytest.skip(f"this machine's host name resolves to {addresses}: no private-only name to test with")
    return name, v4[0]


def test_a_name_resolving_to_a_private_address_is_refused_at_send_time(procs, producer: Producer, receiver):
    """Defaults everywhere: the name passes the up-front check, the worker resolves it and sends nothing."""
    name, address = _private_name()
    hook = receiver(host=address)  # a receiver that would get the POST if the check did not hold
    procs.inference(latency_a="0", latency_b="0")
    procs.worker()
    url = hook.url.replace(address, name)
    job_id = producer.enqueue("a kite", width=64, height=64, options={"webhook_url": url})
    state = wait_until(lambda: producer.fetch(job_id).get_meta(refresh=True).get("webhook"), timeout=30)
    assert state["delivered"] is False and state["error"].startswith("refused:") and "non-public" in state["error"]
    time.sleep(0.5)
    assert hook.calls == []


def test_the_guarded_session_never_connects_to_a_private_address(receiver):
    """The check inside the connection (against DNS rebinding): even a direct call is refused before connecting."""
    import requests

    from zimg_queue.webhook_targets import session

    hook = receiver()
    with pytest.raises(requests.ConnectionError, match="non-public"):
        session(allow_private=False).post(hook.url, data=b"{}", timeout=5)
    assert hook.calls == []
    assert session(allow_private=True).post(hook.url, data=b"{}", timeout=5).status_code == 204
