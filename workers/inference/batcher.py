"""``Batcher``: concurrent requests in, batches out, one GPU thread.

Several RQ workers call the inference server at once. Requests that share a ``batch_key`` (width,
height, steps) and the backend's group are gathered into one ``backend.generate`` call on a single GPU
thread (:class:`~workers.inference.runner.Runner` runs it).

**Policy.** The oldest waiting request leads; its batch takes every waiting request of its kind, up to
the shape's capacity (:class:`~workers.inference.capacity.Capacity`). It goes at once when it is full, or
when the GPU has been idle for ``max_wait_s`` already (a lone request on an idle server never waits);
otherwise it waits at most until ``max_wait_s`` after the previous batch ended, so that the clients that
batch just answered can send their next request and ride along. While a batch runs, the next one forms
in the queue. The README's inference section has the measurement behind the default.

**Admission.** ``max_queue`` (default 4 x ``max_batch``, at least 16) caps the requests waiting for the GPU:
beyond it :class:`QueueFull` (the
server answers 503 with ``Retry-After``). A request whose deadline passed, or which was cancelled, is
dropped before it reaches the GPU. Identical requests in flight together are computed once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import structlog

from .backends.base import Backend, DeviceFailure, InferenceRequest, admit
from .capacity import Capacity
from .errors import Cancelled, DeadlineExceeded, QueueFull, Rejected, Unhealthy
from .runner import Runner
from .tickets import Pending, Ticket, Work

__all__ = ["Batcher", "Pending", "Ticket"]
log = structlog.get_logger(__name__)
MIN_DEFAULT_QUEUE = 16


class Batcher:
    """Owns the backend and its one GPU thread; any number of threads may :meth:`submit`."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch: int = 8,
        max_wait_s: float = 0.0,
        max_queue: int | None = None,
        max_batch_pixels: int = 0,
        probe_after: int = 8,
        on_batch: Callable[[int, float], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.backend = backend
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        # A few batches' worth, and never fewer than the 16 workers `zimg up` runs with a model: a small
        # --max-batch must not turn the default worker count into 503s (measured: GPU idle 8 % at --max-batch 1).
        self.max_queue = max_queue if max_queue is not None else max(4 * max_batch, MIN_DEFAULT_QUEUE)
        self.capacity = Capacity(max_batch, max_batch_pixels, probe_after)
        self.runner = Runner(backend, self.capacity, on_done=self._finish, on_batch=on_batch)
        self.on_fatal = on_fatal
        self.fatal: BaseException | None = None
        self.counts = {"rejected": 0, "expired": 0, "cancelled": 0, "deduplicated": 0}
        self._queue: list[Work] = []
        self._flights: dict[InferenceRequest, Work] = {}
        self._jobs: dict[str, Ticket] = {}
        self._last_end = -math.inf
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._thread.start()

    # --- the HTTP threads' side ------------------------------------------------------------------

    def submit(
        self,
        request: InferenceRequest,
        request_id: str | None = None,
        *,
        job_id: str | None = None,
        deadline: float | None = None,
    ) -> Ticket:
        """Queue one request (raises ``ValidationError`` from the backend's ``admit``, or a :class:`Rejected`)."""
        group: Hashable = (request.batch_key, admit(self.backend, request))
        ticket = Ticket(request, request_id, job_id, deadline)
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            if self.fatal is not None:
                raise Unhealthy(f"the device failed: {self.fatal}")
            if deadline is not None and deadline <= time.time():
                self.counts["expired"] += 1
                raise DeadlineExceeded("the request's deadline passed before it arrived")
            work = self._flights.get(request.flight_key)
            if work is not None:
                self.counts["deduplicated"] += 1
                ticket.shared = work.started is not None
            else:
                if len(self._queue) >= self.max_queue:
                    self.counts["rejected"] += 1
                    raise QueueFull(f"{len(self._queue)} requests are waiting (--max-queue)", self._retry_after())
                work = Work(request, group)
                self._flights[request.flight_key] = work
                self._queue.append(work)
                self._cond.notify()
            work.tickets.append(ticket)
            ticket.work = work
            if job_id:
                self._jobs[job_id] = ticket
        return ticket

    def wait(self, ticket: Ticket) -> Any:
        """The ticket's image; past its deadline while still queued it is withdrawn (:class:`DeadlineExceeded`)."""
        if ticket.deadline is not None:
            remaining = ticket.deadline - time.time()
            try:
                return ticket.future.result(timeout=max(0.0, remaining))
            except TimeoutError:
                if self._withdraw(ticket, DeadlineExceeded("the deadline passed while the request was queued")):
                    with self._cond:
                        self.counts["expired"] += 1
        return ticket.future.result()

    def cancel(self, job_id: str) -> bool | None:
        """Drop the queued request of ``job_id``: True, False when it already runs, None when unknown."""
        with self._cond:
            ticket = self._jobs.get(job_id)
        if ticket is None:
            return None
        if self._withdraw(ticket, Cancelled(f"job {job_id} was cancelled")):
            with self._cond:
                self.counts["cancelled"] += 1
            return True
        return False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    @property
    def depth(self) -> int:
        """Requests waiting for the GPU (one per distinct image)."""
        return len(self._queue)

    @property
    def progress(self) -> dict[str, tuple[int, int]]:
        return self.runner.progress

    @property
    def stats(self) -> dict[str, Any]:
        return self.runner.stats

    def gpu_busy_ratio(self) -> float:
        return self.runner.busy.ratio()

    def snapshot(self) -> dict[str, Any]:
        return {
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_s * 1000,
            "max_queue": self.max_queue,
            "max_batch_pixels": self.capacity.max_batch_pixels,
            "depth": self.depth,
            "gpu_busy_ratio": round(self.gpu_busy_ratio(), 4),
            "capacity": self.capacity.snapshot(),
            **self.counts,
            **self.stats,
        }

    def _withdraw(self, ticket: Ticket, error: Rejected) -> bool:
        """Take ``ticket`` out if its work has not started; the work goes too when no ticket is left."""
        with self._cond:
            work = ticket.work
            if work is None or work.started is not None or ticket.future.done():
                return False
            work.tickets.remove(ticket)
            self._forget(ticket)
            if not work.tickets:
                self._queue.remove(work)
                self._flights.pop(work.request.flight_key, None)
        ticket.future.set_exception(error)
        return True

    def _forget(self, ticket: Ticket) -> None:
        if ticket.job_id and self._jobs.get(ticket.job_id) is ticket:
            del self._jobs[ticket.job_id]

    def _retry_after(self) -> float:
        """Seconds until the queue has probably drained by one batch: at least 1."""
        per_batch = self.stats["last_batch_s"] or 1.0
        return max(1.0, math.ceil(per_batch * len(self._queue) / self.max_batch))

    # --- the GPU thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self.runner.run(batch)
            except DeviceFailure as exc:
                self._die(exc, batch)
                return
            finally:
                with self._cond:
                    self._last_end = time.monotonic()

    def _next_batch(self) -> list[Work] | None:
        with self._cond:
            while True:
                self._drop_expired()
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                head = self._queue[0]
                limit = self.capacity.limit(head.request.shape)
                same = [w for w in self._queue if w.group == head.group][:limit]
                remaining = self._last_end + self.max_wait_s - time.monotonic()
                if len(same) >= limit or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            taken = {id(w) for w in same}
            self._queue = [w for w in self._queue if id(w) not in taken]
            for work in same:
                work.started = time.monotonic()  # from here on, no ticket can be withdrawn
            return same

    def _drop_expired(self) -> None:
        now = time.time()
        for work in [w for w in self._queue if w.expired(now)]:
            self._queue.remove(work)
            self._flights.pop(work.request.flight_key, None)
            for ticket in work.tickets:
                self._forget(ticket)
            self.counts["expired"] += len(work.tickets)
            work.resolve(error=DeadlineExceeded("the deadline passed while the request was queued"))

    def _finish(self, work: Work, image: Any, error: BaseException | None) -> None:
        with self._cond:
            if self._flights.get(work.request.flight_key) is work:
                del self._flights[work.request.flight_key]
            for ticket in work.tickets:
                self._forget(ticket)
        work.resolve(image, error)

    def _die(self, exc: DeviceFailure, running: list[Work]) -> None:
        """The device is gone: answer everyone, refuse new work, let the server exit."""
        log.error("device_failed", error=str(exc))
        with self._cond:
            self.fatal = exc
            victims = running + self._queue
            self._queue = []
            self._flights.clear()
            self._jobs.clear()
        for work in victims:
            work.resolve(error=Unhealthy(f"the device failed: {exc}"))
        if self.on_fatal:
            self.on_fatal(exc)
