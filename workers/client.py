"""``InferenceClient``: the worker's one pooled HTTP connection to the inference server."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

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
    """Calls ``{base_url}/v1/generate`` over a pool of keep-alive connections.

    Connect and read timeouts are separate: a dead server is noticed in seconds
    while a slow (large, batched) generation still has minutes. Errors are mapped
    to :mod:`workers.errors` so the job knows what is worth retrying and what is
    worth waiting for (:class:`InferenceDown`).

    ``generate``, on every job's path, goes through urllib3 (which requests wraps) directly:
    measured against a sim server, 0.35 against 0.57 ms of client CPU per call for requests'
    ``Session.post`` (its request preparation, hooks and response wrapping), on 2 cores shared
    with the rest of the stack. The rare calls (progress, cancel, health) keep a ``requests``
    session.
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
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.session = inference_session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(auth)
        # No retries (a retry is the job's business) and no redirects, like the session's adapter.
        self.pool = urllib3.PoolManager(num_pools=1, maxsize=pool_size, retries=False)
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._headers = {"Content-Type": "application/json", **auth}

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
        data = json.dumps(request).encode()
        headers = {**self._headers, **self.headers(request_id, job_id)}
        try:
            resp = self.pool.request("POST", url, body=data, headers=headers, timeout=self._timeout, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            raise self._transport_error(exc) from None
        status = resp.status
        if status in DOWN_STATUSES:
            raise InferenceDown(
                f"inference server at {self.base_url} answered {status}: {_detail(resp.data)}",
                status_code=status,
                retry_after=_retry_after(resp.headers),
            )
        if status >= 500:
            detail = _detail(resp.data)
            if "out of memory" in detail.lower():
                raise InferenceOutOfMemory(detail)
            raise InferenceUnavailable(f"inference server answered {status}: {detail}", status_code=500)
        if status in (401, 403):
            raise InferenceRejected(
                f"inference server answered {status}: {_detail(resp.data)} "
                "(the workers' ZIMG_INFERENCE_TOKEN must be the server's)"
            )
        if status >= 400:
            raise InferenceRejected(f"inference server answered {status}: {_detail(resp.data)}")
        try:
            body = json.loads(resp.data)
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

    def _transport_error(self, exc: Exception) -> InferenceUnavailable:
        """Refused or unreachable: the server is down. Dropped mid-answer: down only if ``/healthz`` agrees.

        A server killed mid-request drops the connection too, and that is an outage to wait out; a
        live server that drops connections is faulty, and that is the retry policy's business.
        """
        where = f"inference server at {self.base_url}"
        if isinstance(exc, ReadTimeoutError):
            return InferenceUnavailable(f"{where} timed out: {exc}")
        if isinstance(exc, ConnectTimeoutError) or _refused(exc):  # NewConnectionError is one
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
        self.pool.clear()


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


def _retry_after(headers: Any) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _detail(data: bytes) -> str:
    """The ``detail`` of an error answer's JSON body, or the start of the body as text."""
    try:
        body = json.loads(data)
    except ValueError:
        return data[:500].decode("utf-8", "replace")
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else str(detail)[:500]
