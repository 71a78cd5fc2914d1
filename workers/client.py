"""``InferenceClient``: the worker's one pooled HTTP connection to the inference server."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

from .errors import InferenceDown, InferenceOutOfMemory, InferenceRejected, InferenceUnavailable

#: Answers that mean "the server cannot take work now", not "this request failed": wait, don't spend a retry.
DOWN_STATUSES = (502, 503)


@dataclass
class GenerateResponse:
    """The decoded JSON answer of ``POST /v1/generate`` plus what its headers say about how it was made."""

    image_b64: Any
    backend: str
    body: dict[str, Any]
    batch_size: int | None = None
    batch_id: str | None = None


class InferenceClient:
    """Calls ``{base_url}/v1/generate`` through one keep-alive ``requests.Session``.

    Connect and read timeouts are separate: a dead server is noticed in seconds
    while a slow (large, batched) generation still has minutes. Errors are mapped
    to :mod:`workers.errors` so the job knows what is worth retrying and what is
    worth waiting for (:class:`InferenceDown`).
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
        self.session = inference_session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def headers(self, request_id: str | None, job_id: str | None) -> dict[str, str]:
        """The contract's request headers: who asked (for the server's logs), which job, and until when it matters."""
        headers = {"X-Zimg-Deadline": f"{time.time() + self.timeout[1]:.3f}"}
        if request_id or job_id:
            headers["X-Request-Id"] = str(request_id or job_id)
        if job_id:
            headers["X-Zimg-Job-Id"] = job_id
        return headers

    def generate(
        self, request: dict[str, Any], *, request_id: str | None = None, job_id: str | None = None
    ) -> GenerateResponse:
        url = f"{self.base_url}/v1/generate"
        try:
            resp = self.session.post(url, json=request, timeout=self.timeout, headers=self.headers(request_id, job_id))
        except requests.RequestException as exc:
            raise self._transport_error(exc) from None
        if resp.status_code in DOWN_STATUSES:
            raise InferenceDown(
                f"inference server at {self.base_url} answered {resp.status_code}: {_detail(resp)}",
                status_code=resp.status_code,
                retry_after=_retry_after(resp),
            )
        if resp.status_code >= 500:
            detail = _detail(resp)
            if "out of memory" in detail.lower():
                raise InferenceOutOfMemory(detail)
            raise InferenceUnavailable(f"inference server answered {resp.status_code}: {detail}", status_code=500)
        if resp.status_code in (401, 403):
            raise InferenceRejected(
                f"inference server answered {resp.status_code}: {_detail(resp)} "
                "(the workers' ZIMG_INFERENCE_TOKEN must be the server's)"
            )
        if resp.status_code >= 400:
            raise InferenceRejected(f"inference server answered {resp.status_code}: {_detail(resp)}")
        try:
            body = resp.json()
        except ValueError:
            raise InferenceUnavailable("inference server answered a body that is not JSON") from None
        if not isinstance(body, dict):
            raise InferenceUnavailable("inference server answered JSON that is not an object")
        backend = resp.headers.get("X-Zimg-Backend") or str(body.get("backend", "upstream"))
        size = resp.headers.get("X-Zimg-Batch-Size") or body.get("batch_size")
        return GenerateResponse(
            image_b64=body.get("image"),
            backend=backend,
            body=body,
            batch_size=_int_or_none(size),
            batch_id=resp.headers.get("X-Zimg-Batch-Id"),
        )

    def _transport_error(self, exc: requests.RequestException) -> InferenceUnavailable:
        """Refused or unreachable: the server is down. Dropped mid-answer: down only if ``/healthz`` agrees.

        A server killed mid-request drops the connection too, and that is an outage to wait out; a
        live server that drops connections is faulty, and that is the retry policy's business.
        """
        where = f"inference server at {self.base_url}"
        if isinstance(exc, requests.ReadTimeout):
            return InferenceUnavailable(f"{where} timed out: {exc}")
        if isinstance(exc, requests.ConnectTimeout) or _refused(exc):
            return InferenceDown(f"{where} could not be reached: {exc}")
        if self.answers():
            return InferenceUnavailable(f"{where} dropped the connection mid-answer: {exc}")
        return InferenceDown(f"{where} could not be reached (it dropped the connection and /healthz fails): {exc}")

    def progress(self, request_id: str) -> dict[str, Any] | None:
        """Steps done for an in-flight request, or ``None`` (unknown id, or an upstream server without it)."""
        try:
            resp = self.session.get(f"{self.base_url}/v1/progress/{request_id}", timeout=(1.0, 2.0))
        except requests.RequestException:
            return None
        return resp.json() if resp.status_code == 200 else None

    def cancel(self, job_id: str) -> bool:
        """Best effort ``DELETE /v1/requests/<job id>``: a stopped job's request should not use the GPU."""
        try:
            resp = self.session.delete(f"{self.base_url}/v1/requests/{job_id}", timeout=(1.0, 2.0))
        except requests.RequestException:
            return False
        return resp.status_code in (200, 202, 204)

    def health(self, timeout: float = 2.0) -> dict[str, Any]:
        resp = self.session.get(f"{self.base_url}/healthz", timeout=(timeout, timeout))
        resp.raise_for_status()
        return resp.json()

    def answers(self, timeout: float = 1.0) -> bool:
        """True when ``/healthz`` answers 2xx within ``timeout``."""
        try:
            self.health(timeout=timeout)
        except (requests.RequestException, ValueError):
            return False
        return True

    def close(self) -> None:
        self.session.close()


def inference_session() -> requests.Session:
    """A ``requests.Session`` for calls to the inference servers, blind to the host's proxy and netrc settings.

    The inference server is a co-located service (loopback, or the GPU hosts' private network). requests'
    ``trust_env`` would send those calls through ``HTTP_PROXY`` unless ``NO_PROXY`` lists the host, and let a
    ``~/.netrc`` entry replace the bearer token with a Basic login; it also costs about 0.2 ms of CPU a call
    (reading the environment each time), on every job's path.
    """
    session = requests.Session()
    session.trust_env = False
    return session


def _refused(exc: BaseException) -> bool:
    """Whether the connection was never made (refused, no route, DNS), looking through requests' wrapping."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, NewConnectionError | ConnectionRefusedError):
            return True
        if isinstance(item, BaseException):
            stack.extend([getattr(item, "reason", None), item.__cause__, item.__context__, *item.args])
    return False


def _retry_after(resp: requests.Response) -> float | None:
    try:
        return max(0.0, float(resp.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _detail(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else str(detail)[:500]
