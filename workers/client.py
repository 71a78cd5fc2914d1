"""``InferenceClient``: the worker's one pooled HTTP connection to the inference server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from .errors import InferenceOutOfMemory, InferenceRejected, InferenceUnavailable


@dataclass
class GenerateResponse:
    """The decoded JSON answer of ``POST /v1/generate`` plus the backend that made it."""

    image_b64: Any
    backend: str
    body: dict[str, Any]


class InferenceClient:
    """Calls ``{base_url}/v1/generate`` through one keep-alive ``requests.Session``.

    Connect and read timeouts are separate: a dead server is noticed in seconds
    while a slow (large, batched) generation still has minutes. Errors are mapped
    to :mod:`workers.errors` so the job knows what is worth retrying.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 300.0,
        token: str | None = None,
        pool_size: int = 4,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def generate(self, request: dict[str, Any], *, request_id: str | None = None) -> GenerateResponse:
        headers = {"X-Request-Id": request_id} if request_id else None
        url = f"{self.base_url}/v1/generate"
        try:
            resp = self.session.post(url, json=request, timeout=self.timeout, headers=headers)
        except requests.Timeout as exc:
            raise InferenceUnavailable(f"inference server at {self.base_url} timed out: {exc}") from None
        except requests.RequestException as exc:
            raise InferenceUnavailable(f"inference server at {self.base_url} could not be reached: {exc}") from None
        if resp.status_code >= 500:
            detail = _detail(resp)
            if "out of memory" in detail.lower():
                raise InferenceOutOfMemory(detail)
            raise InferenceUnavailable(f"inference server answered {resp.status_code}: {detail}")
        if resp.status_code >= 400:
            raise InferenceRejected(f"inference server answered {resp.status_code}: {_detail(resp)}")
        try:
            body = resp.json()
        except ValueError:
            raise InferenceUnavailable("inference server answered a body that is not JSON") from None
        if not isinstance(body, dict):
            raise InferenceUnavailable("inference server answered JSON that is not an object")
        backend = resp.headers.get("X-Zimg-Backend") or str(body.get("backend", "upstream"))
        return GenerateResponse(image_b64=body.get("image"), backend=backend, body=body)

    def progress(self, request_id: str) -> dict[str, Any] | None:
        """Steps done for an in-flight request, or ``None`` (unknown id, or an upstream server without it)."""
        try:
            resp = self.session.get(f"{self.base_url}/v1/progress/{request_id}", timeout=(1.0, 2.0))
        except requests.RequestException:
            return None
        return resp.json() if resp.status_code == 200 else None

    def health(self, timeout: float = 2.0) -> dict[str, Any]:
        resp = self.session.get(f"{self.base_url}/healthz", timeout=(timeout, timeout))
        resp.raise_for_status()
        return resp.json()

    def close(self) -> None:
        self.session.close()


def _detail(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else str(detail)[:500]
