"""``InferencePool``: a worker's view of several inference servers (one per GPU, or one per host).

``ZIMG_INFERENCE_URL`` may be a comma list. The first URL is the worker's *home*
server (``zimg up --gpus`` gives each GPU's workers their own GPU first; on a GPU
host, put the local server first); the others are where its jobs go while the
home server is dead, unhealthy or full.

Why failover here and not only RQ's retries: a request is content-addressed and
idempotent, so sending it to another GPU is always safe, and a job whose server
died mid-request finishes at once on another instead of spending a retry (or the
outage budget) waiting for a server that may never come back.

The rules, per request, in preference order:

* a server that cannot be reached, or answers 503 (busy or unhealthy), is skipped
  and the next one tried;
* a server that failed this way and no longer answers ``/healthz`` is taken out of
  rotation for a cool-down (5 s, doubling up to 60 s); after it, one ``/healthz``
  probe puts it back;
* any other answer (an image, a 4xx, a 500 from a server that is still healthy)
  ends the request: the job's retry policy, not failover, handles real errors;
* only when every server failed is the last error raised, so the worker's outage
  handling sees an outage only when there is one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import structlog

from .client import GenerateResponse, InferenceClient, inference_session
from .errors import InferenceUnavailable

log = structlog.get_logger(__name__)

COOLDOWN_S = 5.0
MAX_COOLDOWN_S = 60.0
PROBE_TIMEOUT_S = 1.0


def split_urls(value: str) -> list[str]:
    """``"http://a:7860, http://b:7860/"`` -> ``["http://a:7860", "http://b:7860"]`` (order kept, no duplicates)."""
    urls: list[str] = []
    for part in value.split(","):
        url = part.strip().rstrip("/")
        if url and url not in urls:
            urls.append(url)
    return urls


def inference_client(url: str, **client_kwargs: Any) -> InferenceClient | InferencePool:
    """One :class:`InferenceClient` for one URL, an :class:`InferencePool` for a comma list."""
    urls = split_urls(url)
    if len(urls) <= 1:
        return InferenceClient(urls[0] if urls else url, **client_kwargs)
    return InferencePool(urls, **client_kwargs)


def is_busy(exc: Exception) -> bool:
    """True for a 502/503 answer (queue full, unhealthy, a proxy with no upstream): this server cannot help now."""
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    return status in (502, 503) or getattr(exc, "retry_after", None) is not None or "answered 503" in str(exc)


class InferencePool:
    """Several :class:`InferenceClient`s behind the same calls (``generate``, ``progress``, ``health``, ``close``).

    ``client_kwargs`` go to every client unchanged (timeouts, token, ...), so the pool
    follows whatever the single client learns to do.
    """

    def __init__(self, urls: Sequence[str], *, cooldown: float = COOLDOWN_S, **client_kwargs: Any):
        if not urls:
            raise ValueError("an inference pool needs at least one URL")
        self.clients = [InferenceClient(url, **client_kwargs) for url in urls]
        self.cooldown = cooldown
        self._down_until = [0.0] * len(self.clients)
        self._penalty = [0.0] * len(self.clients)
        self._routes: dict[str, InferenceClient] = {}
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return ",".join(c.base_url for c in self.clients)

    @property
    def urls(self) -> list[str]:
        return [c.base_url for c in self.clients]

    # --- rotation ----------------------------------------------------------------------------------
    def in_rotation(self) -> list[int]:
        """Indexes of the servers to try, in preference order; every server when all are out (outage)."""
        now = time.monotonic()
        order = []
        for i, client in enumerate(self.clients):
            with self._lock:
                until = self._down_until[i]
            if until <= 0:
                order.append(i)
            elif until <= now:  # cool-down over: one /healthz probe decides
                if _answers(client):
                    self._mark_up(i)
                    order.append(i)
                else:
                    self._mark_down(i, InferenceUnavailable("still not answering /healthz"))
        return order or list(range(len(self.clients)))

    def _mark_down(self, i: int, exc: Exception) -> None:
        with self._lock:
            self._penalty[i] = min(MAX_COOLDOWN_S, max(self.cooldown, self._penalty[i] * 2))
            self._down_until[i] = time.monotonic() + self._penalty[i]
        log.warning("inference_server_out_of_rotation", url=self.clients[i].base_url, for_s=self._penalty[i],
                    error=f"{type(exc).__name__}: {exc}"[:300])  # fmt: skip

    def _mark_up(self, i: int) -> None:
        with self._lock:
            was_down = self._penalty[i] > 0
            self._down_until[i], self._penalty[i] = 0.0, 0.0
        if was_down:
            log.info("inference_server_back_in_rotation", url=self.clients[i].base_url)

    # --- the InferenceClient calls -----------------------------------------------------------------
    def generate(self, request: dict[str, Any], *, request_id: str | None = None, **kwargs: Any) -> GenerateResponse:
        last: InferenceUnavailable | None = None
        for i in self.in_rotation():
            client = self.clients[i]
            if request_id:
                self._routes[request_id] = client
            try:
                response = client.generate(request, request_id=request_id, **kwargs)
            except InferenceUnavailable as exc:
                last = exc
                if is_busy(exc):
                    if not _answers(client):
                        self._mark_down(i, exc)
                    continue
                if _answers(client):
                    raise  # a live, healthy server's own error: the retry policy decides
                self._mark_down(i, exc)
                continue
            finally:
                if request_id:
                    self._routes.pop(request_id, None)
            self._mark_up(i)
            return response
        assert last is not None
        raise last

    def progress(self, request_id: str) -> dict[str, Any] | None:
        client = self._routes.get(request_id)
        return client.progress(request_id) if client is not None else None

    def health(self, timeout: float = 2.0) -> dict[str, Any]:
        """Each server's ``/healthz`` answer (or its error); raises :class:`InferenceUnavailable` if none answers."""
        out: dict[str, Any] = {}
        for client in self.clients:
            try:
                out[client.base_url] = client.health(timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
                out[client.base_url] = {"status": "down", "error": type(exc).__name__}
        if all(v.get("status") == "down" for v in out.values()):
            raise InferenceUnavailable(f"no inference server answers: {', '.join(out)}")
        return {"status": "ok", "servers": out}

    def __getattr__(self, name: str) -> Any:
        """Other ``InferenceClient`` calls (say, cancelling a request) go to every server; first answer wins."""
        if name.startswith("_") or not callable(getattr(InferenceClient, name, None)):
            raise AttributeError(name)

        def each(*args: Any, **kwargs: Any) -> Any:
            answers = [getattr(c, name)(*args, **kwargs) for c in self.clients]
            return next((a for a in answers if a), answers[0])

        return each

    def close(self) -> None:
        for client in self.clients:
            client.close()


def _answers(client: InferenceClient) -> bool:
    """True when the server's ``/healthz`` answers 200 within :data:`PROBE_TIMEOUT_S`."""
    try:
        client.health(timeout=PROBE_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - refused, timed out, 503: all "not healthy"
        return False
    return True


def servers_health(url: str, timeout: tuple[float, float] = (0.5, 2.0)) -> dict[str, Any]:
    """A health check over ``ZIMG_INFERENCE_URL`` (one URL or a comma list): ok while at least one server answers.

    With several servers ``servers`` says which answer, so a dead GPU shows up in ``/healthz``
    while the service as a whole (its other GPUs) still works.
    """
    import requests

    urls = split_urls(url)
    up: dict[str, bool] = {}
    error = None
    with inference_session() as session:
        for one in urls:
            try:
                up[one] = session.get(f"{one}/healthz", timeout=timeout).ok
            except requests.RequestException as exc:
                up[one], error = False, type(exc).__name__
    check: dict[str, Any] = {"ok": any(up.values())}
    if len(urls) > 1:
        check["servers"] = up
    elif error and not check["ok"]:
        check["error"] = error
    return check
