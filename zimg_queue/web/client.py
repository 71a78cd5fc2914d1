"""``ApiClient``: the producer's calls over HTTP, for ``zimg generate|status|cancel --api URL``.

It mirrors :class:`zimg_queue.queue.Producer` (enqueue, status, wait, cancel) so the CLI
does the same thing against Redis or against a remote ``zimg web``. A 400 with field
errors comes back as the same :class:`ValidationError` the producer raises.
The token comes only from ``ZIMG_API_TOKEN`` (or the caller), never from a command line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from ..request import ValidationError
from ..settings import Settings


class ApiClientError(requests.HTTPError):
    """A non-2xx answer that is not a validation error."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class ApiClient:
    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        token = token if token is not None else Settings().secret("api_token")
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def _call(self, method: str, path: str, *, wait: float = 0.0, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        response = self.session.request(method, url, timeout=(3.05, self.timeout + wait), **kwargs)
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
