"""Job-end hooks: metrics for every job, and a signed webhook for jobs that asked for one.

Targets are checked (:mod:`zimg_queue.webhook_targets`): http(s) only, and no loopback,
private or link-local address after DNS unless ``ZIMG_WEBHOOK_ALLOW_PRIVATE``; a refused
delivery is recorded in the job's meta and not retried.

RQ's own ``Webhook`` posts a fixed payload, unsigned, once, from inside the worker's
loop. What this service promises is the job's status JSON (the same as
``GET /v1/jobs/<id>``), signed per `Standard Webhooks <https://www.standardwebhooks.com/>`_
and retried with backoff. So the job's RQ *callbacks* (``on_success``/``on_failure``,
set on every job by the producer) only *enqueue* a delivery: :func:`deliver` is an RQ
job of its own with RQ's ``Retry``. A slow or dead receiver never blocks a GPU
worker, and a pending delivery survives worker restarts because it lives in Redis.

Signing: ``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``
with the key from ``ZIMG_WEBHOOK_SECRET``: ``whsec_<base64>`` (the Standard Webhooks
form, decoded) or any other string (used as UTF-8 bytes). ``webhook-id`` stays the
same across retries so receivers can drop duplicates.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import redis
import requests
from rq import Retry, get_current_job
from rq.job import Job
from rq.serializers import JSONSerializer

from zimg_queue import webhook_targets as targets
from zimg_queue.claims import ClaimingQueue
from zimg_queue.metrics import record_job
from zimg_queue.queue import jittered
from zimg_queue.request import ValidationError
from zimg_queue.settings import Settings
from zimg_queue.status import now_iso, wait_for

from .result_writes import RESULT_WRITES

log = logging.getLogger(__name__)
DELIVER_FUNC = "workers.webhooks.deliver"
DEFAULT_INTERVALS = (5.0, 30.0, 120.0, 600.0, 1800.0)
TIMEOUT = (3.05, 10.0)


class WebhookFailed(Exception):
    """The receiver did not answer 2xx; RQ retries the delivery job."""


def secret_key(secret: str) -> bytes:
    """The HMAC key: ``whsec_<base64>`` decoded, otherwise the string's UTF-8 bytes."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_") :])
    return secret.encode("utf-8")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """What a receiver does (used by the tests): any matching ``v1`` signature within the time tolerance."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, ts = lower.get("webhook-id", ""), lower.get("webhook-timestamp", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > tolerance_s:
        return False
    expected = sign(secret, msg_id, int(ts), body).encode()
    return any(hmac.compare_digest(expected, sig.encode()) for sig in lower.get("webhook-signature", "").split())


def signed_headers(msg_id: str, body: bytes, secret: str | None, now: float | None = None) -> dict[str, str]:
    timestamp = int(now if now is not None else time.time())
    headers = {"Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if secret:
        headers["webhook-signature"] = sign(secret, msg_id, timestamp, body)
    return headers


def _intervals() -> list[float]:
    values = list(Settings().webhook_retry_intervals)
    return jittered(values) if any(values) else values


def _options(job: Job) -> dict[str, Any]:
    return job.args[1] if len(job.args) > 1 and isinstance(job.args[1], dict) else {}


def enqueue_delivery(job: Job, connection: redis.Redis, event: str) -> str | None:
    """Put a :func:`deliver` job for ``job`` on the high-priority queue; return its id (``None``: no webhook)."""
    url = _options(job).get("webhook_url")
    if not url:
        return None
    settings = Settings.from_env()
    queue = ClaimingQueue(settings.queue_name("high"), connection=connection, serializer=JSONSerializer)
    intervals = _intervals()
    msg_id = f"msg_{uuid.uuid4().hex}"
    delivery = queue.enqueue_call(
        DELIVER_FUNC,
        args=(job.id, url, event, msg_id),
        job_id=f"webhook-{msg_id[4:]}",
        timeout=60,
        result_ttl=settings.result_ttl,
        failure_ttl=settings.failure_ttl,
        retry=Retry(max=len(intervals), interval=intervals) if intervals else None,  # type: ignore[arg-type]
        description=f"webhook {event} for {job.id} to {url}",
    )
    return delivery.id


def deliver(job_id: str, url: str, event: str, msg_id: str) -> dict[str, Any]:
    """POST the job's status JSON to ``url``, signed; raise (so RQ retries) unless the answer is 2xx."""
    me = get_current_job()
    connection = me.connection if me is not None else redis.Redis.from_url(Settings.from_env().redis_url or "")
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    payload = wait_for(job, timeout=10, fresh=True)  # the callback runs just before RQ marks the job final
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    settings = Settings()
    headers = signed_headers(msg_id, body, settings.secret("webhook_secret"))
    attempt = (me.meta.get("attempt", 0) + 1) if me is not None else 1
    if me is not None:
        me.meta["attempt"] = attempt
        me.save_meta()
    refused = _refusal(url, settings.webhook_allow_private)
    if refused:  # permanent: not retried, and nothing is sent
        log.warning("webhook %s to %s refused: %s", msg_id, url, refused)
        _note(job, {"id": msg_id, "event": event, "url": url, "attempts": attempt, "delivered": False,
                    "error": f"refused: {refused}", "at": now_iso()})  # fmt: skip
        return {"id": msg_id, "url": url, "refused": refused, "attempts": attempt}
    try:
        with targets.session(allow_private=settings.webhook_allow_private) as http:
            resp = http.post(url, data=body, headers=headers, timeout=TIMEOUT, allow_redirects=False)
        error = None if 200 <= resp.status_code < 300 else f"receiver answered {resp.status_code}"
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {exc}"
    _note(job, {"id": msg_id, "event": event, "url": url, "attempts": attempt, "delivered": error is None,
                "error": error, "at": now_iso()})  # fmt: skip
    if error:
        raise WebhookFailed(f"webhook {msg_id} to {url} failed (attempt {attempt}): {error}")
    return {"id": msg_id, "url": url, "status": resp.status_code, "attempts": attempt}


def _refusal(url: str, allow_private: bool) -> str | None:
    """Why ``url`` may not be called from here (see :mod:`zimg_queue.webhook_targets`), checked after DNS."""
    try:
        targets.check_url(url, allow_private=allow_private)
        if not allow_private:
            parts = urlsplit(url)
            targets.public_address(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    except ValidationError as exc:
        return exc.errors[0]["message"]
    except (targets.TargetRefused, ValueError) as exc:
        return str(exc)
    return None


def _note(job: Job, state: dict[str, Any]) -> None:
    """Keep the latest delivery state in the job's meta, so ``GET /v1/jobs/<id>`` clients can see it."""
    try:
        job.get_meta(refresh=True)
        job.meta["webhook"] = state
        job.save_meta()
    except redis.RedisError:
        log.warning("could not record webhook state for %s", job.id, exc_info=True)


def _duration(job: Job) -> float | None:
    if job.started_at is None:
        return None
    ended = job.ended_at or datetime.now(timezone.utc)
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=timezone.utc)
    ended = ended if ended.tzinfo else ended.replace(tzinfo=timezone.utc)
    return max(0.0, (ended - started).total_seconds())


def _queued(job: Job) -> float | None:
    """Seconds from (the last) enqueue to start: the wait a bigger worker pool would shorten."""
    if job.started_at is None or job.enqueued_at is None:
        return None
    return max(0.0, (job.started_at - job.enqueued_at).total_seconds())


def job_finished(job: Job, connection: redis.Redis, result: Any, *args: Any, **kwargs: Any) -> None:
    """RQ ``on_success`` callback of every generate job."""
    if job.func_name == DELIVER_FUNC:
        return
    info = result if isinstance(result, dict) else {}
    images = 0 if info.get("cache_hit") else 1
    duration_s, queued_s = _duration(job), _queued(job)
    try:  # in the transaction that writes the result (workers.result_writes): no round trip of its own
        RESULT_WRITES.add(connection, lambda pipe: record_job(pipe, job.origin, ok=True, duration_s=duration_s,
                          inference_s=info.get("inference_s"), images=images, queued_s=queued_s))  # fmt: skip
    except redis.RedisError:
        log.warning("could not record metrics for %s", job.id, exc_info=True)
    enqueue_delivery(job, connection, "finished")


def job_failed(job: Job, connection: redis.Redis, *exc_info: Any, **kwargs: Any) -> None:
    """RQ ``on_failure`` callback: acts only on the *final* failure, not on an attempt RQ will retry."""
    if job.func_name == DELIVER_FUNC or job.should_retry:
        return
    duration_s = _duration(job)
    try:
        RESULT_WRITES.add(connection, lambda pipe: record_job(pipe, job.origin, ok=False, duration_s=duration_s))
    except redis.RedisError:
        log.warning("could not record metrics for %s", job.id, exc_info=True)
    enqueue_delivery(job, connection, "failed")
