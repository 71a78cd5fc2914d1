"""``Runner``: runs one batch on the backend, and keeps one request's trouble from spreading.

* **Out of memory** (:func:`~workers.inference.errors.classify` says ``oom``): the shape's learned
  capacity drops (see :mod:`~workers.inference.capacity`) and the members run again in batches of the
  new cap; a request that does not fit alone gets :class:`OutOfMemory`.
* **Any other error** in a batch of several: probably one request's fault, so the batch is bisected and
  each half runs again; only the request that fails alone gets the error.
* **A broken device** (``fatal``): :class:`DeviceFailure` propagates; the batcher stops everything.

Every batch gets a batch id, logged with its members' request ids (``X-Request-Id``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from .backends.base import Backend, DeviceFailure, ProgressFn
from .busy import BusyClock
from .capacity import Capacity
from .errors import as_out_of_memory, classify, first_line
from .tickets import Work

log = structlog.get_logger(__name__)


class Runner:
    def __init__(
        self,
        backend: Backend,
        capacity: Capacity,
        *,
        on_done: Callable[[Work, Any, BaseException | None], None],
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.backend = backend
        self.capacity = capacity
        self.on_done = on_done
        self.on_batch = on_batch
        self.busy = BusyClock()
        self.progress: dict[str, tuple[int, int]] = {}
        self.stats: dict[str, Any] = {
            "batches": 0,
            "images": 0,
            "calls": 0,
            "failed_calls": 0,
            "oom_splits": 0,
            "isolations": 0,
            "busy_s": 0.0,
            "last_batch_s": 0.0,
        }

    def run(self, works: Sequence[Work]) -> None:
        """Run ``works`` (one shape, one group) to an answer each; raises :class:`DeviceFailure` only."""
        works = list(works)
        batch_id = uuid.uuid4().hex[:12]
        started = time.monotonic()
        for work in works:
            work.started, work.batch_size, work.batch_id = started, len(works), batch_id
        shape = works[0].request.shape
        request_ids = [t.request_id for w in works for t in w.tickets if t.request_id]
        log.info("batch_started", batch_id=batch_id, size=len(works), shape=f"{shape[0]}x{shape[1]}",
                 steps=works[0].request.num_inference_steps, request_ids=request_ids)  # fmt: skip
        self.stats["calls"] += 1
        self.busy.start()
        try:
            images = self.backend.generate([w.request for w in works], self._progress_for(works))
            if len(images) != len(works):
                raise RuntimeError(f"backend returned {len(images)} images for {len(works)} requests")
        except Exception as exc:  # classified below: nothing escapes but a broken device
            self.busy.stop()
            self.stats["failed_calls"] += 1
            self._clear_progress(works)
            self._failed(works, exc, batch_id, time.monotonic() - started)
            return
        elapsed = time.monotonic() - started
        self.busy.stop()
        self._clear_progress(works)
        self.capacity.record_success(shape, len(works))
        self.stats["batches"] += 1
        self.stats["images"] += len(works)
        self.stats["busy_s"] += elapsed
        self.stats["last_batch_s"] = elapsed
        log.info("batch_finished", batch_id=batch_id, size=len(works), seconds=round(elapsed, 4))
        if self.on_batch:
            self.on_batch(len(works), elapsed)
        for work, image in zip(works, images):
            self.on_done(work, image, None)

    def _failed(self, works: list[Work], exc: Exception, batch_id: str, elapsed: float) -> None:
        kind = classify(exc)
        log.warning("batch_failed", batch_id=batch_id, size=len(works), kind=kind, error=first_line(exc),
                    seconds=round(elapsed, 4))  # fmt: skip
        if kind == "fatal":
            raise exc if isinstance(exc, DeviceFailure) else DeviceFailure(first_line(exc))
        shape = works[0].request.shape
        if kind == "oom":
            cap = self.capacity.record_oom(shape, len(works))
            if len(works) == 1:
                self._fail(works[0], as_out_of_memory(exc))
                return
            self.stats["oom_splits"] += 1
            for i in range(0, len(works), cap):
                self.run(works[i : i + cap])
            return
        if len(works) == 1:
            self._fail(works[0], exc)
            return
        self.stats["isolations"] += 1  # one bad request must not fail the others: bisect
        half = len(works) // 2
        self.run(works[:half])
        self.run(works[half:])

    def _fail(self, work: Work, exc: BaseException) -> None:
        self.on_done(work, None, exc)

    def _progress_for(self, works: Sequence[Work]) -> ProgressFn:
        ids = [t.request_id for w in works for t in w.tickets if t.request_id]

        def progress(step: int, steps: int) -> None:
            for request_id in ids:
                self.progress[request_id] = (step, steps)

        return progress

    def _clear_progress(self, works: Sequence[Work]) -> None:
        for work in works:
            for ticket in work.tickets:
                if ticket.request_id:
                    self.progress.pop(ticket.request_id, None)
