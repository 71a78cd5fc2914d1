"""Signed webhooks: a real HTTP receiver on loopback checks Standard Webhooks signatures; failures are retried."""

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


def test_signature_matches_the_standard_webhooks_test_vector():
    body = b'{"test": 2432232314}'
    assert sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


class Receiver:
    """An HTTP server thread recording every POST; answers ``fail_first`` 500s before 200s."""

    def __init__(self, fail_first: int = 0):
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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(fail_first: int = 0) -> Receiver:
        made.append(Receiver(fail_first))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_finished_job_posts_its_signed_status_and_a_failing_receiver_is_retried(procs, producer: Producer, receiver):
    hook = receiver(fail_first=2)
    procs.inference(latency_a="0", latency_b="0")
    procs.worker(zimg_webhook_secret=SECRET, zimg_webhook_retry_intervals="0.2,0.2,0.2")
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


def test_failed_job_posts_once_after_its_last_attempt(procs, producer: Producer, receiver):
    hook = receiver()
    procs.worker(zimg_webhook_secret="plain-secret")  # no inference server: the job fails after its retries
    job_id = producer.enqueue("nobody home", width=64, height=64, options={"webhook_url": hook.url})
    wait_until(lambda: hook.calls, timeout=60)
    final = producer.wait(job_id, timeout=30)
    payload = json.loads(hook.calls[0]["body"])
    assert payload["status"] == "failed" and "could not be reached" in payload["error"]
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
    producer = Producer(redis_conn, settings.with_(max_retries=0))
    procs.inference(latency_a="30", latency_b="0")  # the job will still be waiting when its worker dies
    victim = procs.worker(zimg_lease_ttl="3")
    job_id = producer.enqueue("doomed", width=64, height=64, options={"webhook_url": hook.url})
    wait_until(lambda: producer.status(job_id)["status"] == "started", timeout=30)
    victim.kill()
    procs.worker(zimg_lease_ttl="3")
    wait_until(lambda: hook.calls, timeout=60)
    payload = json.loads(hook.calls[0]["body"])
    assert payload["id"] == job_id and payload["status"] == "failed"
    assert payload["error"].startswith("WorkerDied:")
