"""``ApiClient``: the producer's calls over HTTP, for ``zimg generate|status|cancel --api URL``.

It mirrors :class:`zimg_queue.queue.Producer` (enqueue, status, wait, cancel) so the CLI
does the same thing against Redis or against a remote ``zimg web``. A 400 with field
errors comes back as the same :class:`ValidationError` the producer raises.
The token comes only from ``ZIMG_API_TOKEN`` (or the caller), never from a command line.

A ``429`` is waited out, not raised: the client sleeps for the server's ``Retry-After``
(with a countdown on a terminal, one log line otherwise) and sends the request again,
so ``zimg batch --api`` finishes any number of items under the server's rate limit.
"""

from __future__ import annotations

import sys
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TextIO

import requests
import structlog

from ..request import ValidationError
from ..settings import Settings


class ApiClientError(requests.HTTPError):
    """A non-2xx answer that is not a validation error."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


log = structlog.get_logger(__name__)
#: A Retry-After beyond this is not believed (a misconfigured server must not park a client for hours).
MAX_RETRY_AFTER_S = 300.0


def retry_after(response: requests.Response, default: float = 1.0) -> float:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; ``default`` if absent."""
    raw = (response.headers.get("Retry-After") or "").strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(raw).timestamp() - time.time()
        except (TypeError, ValueError):
            seconds = default
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


class ApiClient:
    """``max_rate_wait``: seconds in all one call may spend waiting out 429s before raising it."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        max_rate_wait: float = 6 * 3600,
        progress: TextIO | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        token = token if token is not None else Settings().secret("api_token")
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self.max_rate_wait = max_rate_wait
        self.progress = progress

    def _countdown(self, seconds: float) -> None:
        """Sleep ``seconds``, showing the time left on a terminal (else one log line)."""
        stream = self.progress or sys.stderr
        if not stream.isatty():
            log.info("rate_limited", retry_in_s=round(seconds, 1), api=self.base_url)
            time.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            stream.write(f"\rrate limited by {self.base_url}: retrying in {left:.0f} s ")
            stream.flush()
            time.sleep(min(1.0, left))
        stream.write("\r\x1b[K")
        stream.flush()

    def _call(self, method: str, path: str, *, wait: float = 0.0, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        waited = 0.0
        while True:
            response = self.session.request(method, url, timeout=(3.05, self.timeout + wait), **kwargs)
            if response.status_code != 429 or waited >= self.max_rate_wait:
                break
            delay = min(max(1.0, retry_after(response)), self.max_rate_wait - waited)
            self._countdown(delay)
            waited += delay
        if response.ok:
            return response
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text[:200]}
        if response.status_code in (400, 422) and body.get("errors"):
            raise ValidationError(body["errors"])
        raise ApiClientError(response.status_code, body.get("message") or response.reason)

    def enqueue(
        self, request: str | dict[str, Any], *, priority: str = "normal", job_id: str | None = None, **fields: Any
    ) -> str:
        """POST /v1/jobs; ``job_id`` is sent as the idempotency key."""
        body = {"prompt": request} if isinstance(request, str) else dict(request)
        body.update(fields)
        if priority != "normal":
            body["priority"] = priority
        if job_id is not None:
            body["idempotency_key"] = job_id
        return self._call("POST", "/v1/jobs", json=body).json()["id"]

    def status(self, job_id: str, wait: float = 0.0) -> dict[str, Any]:
        params = {"wait": f"{wait:g}"} if wait > 0 else None
        return self._call("GET", f"/v1/jobs/{job_id}", params=params, wait=wait).json()

    def wait(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Hold ``?wait=`` requests (60 s at most each) until the job is final or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            status = self.status(job_id, wait=max(0.0, min(60.0, remaining)))
            if status["status"] in ("finished", "failed", "canceled", "stopped") or remaining <= 0:
                return status

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/jobs/{job_id}").json()

    def image(self, job_id: str) -> bytes:
        return self._call("GET", f"/v1/jobs/{job_id}/image").content

    def download(self, job_id: str, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.image(job_id))
        return path

    def queues(self) -> dict[str, Any]:
        return self._call("GET", "/v1/queues").json()
