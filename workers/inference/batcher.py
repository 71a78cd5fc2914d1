"""``Batcher``: dynamic batching of concurrent requests into one backend call.

Several RQ workers call the inference server at once. Requests that share a
``batch_key`` (width, height, steps) are gathered, up to ``max_batch`` of them
and for at most ``max_wait_s`` after the oldest arrived, then run as one
``backend.generate`` call on a single GPU thread. A batch that runs out of
memory is split in halves until it fits; a single request that still does not
fit fails alone with :class:`OutOfMemory`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .backends.base import Backend, InferenceRequest, OutOfMemory

log = logging.getLogger(__name__)


@dataclass
class Pending:
    request: InferenceRequest
    request_id: str | None
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)
    started: float | None = None
    batch_size: int = 0


class Batcher:
    """Owns the backend and its one GPU thread; any number of threads may :meth:`submit`."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch: int = 8,
        max_wait_s: float = 0.01,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.backend = backend
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._pending: list[Pending] = []
        self._cond = threading.Condition()
        self._closed = False
        self.progress: dict[str, tuple[int, int]] = {}
        self.stats = {"batches": 0, "images": 0, "oom_splits": 0, "busy_s": 0.0}
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._thread.start()

    def submit(self, request: InferenceRequest, request_id: str | None = None) -> Pending:
        """Queue one request; wait on ``.future`` for its image (``.batch_size`` tells how it ran)."""
        item = Pending(request, request_id)
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            self._pending.append(item)
            self._cond.notify()
        return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    @property
    def depth(self) -> int:
        return len(self._pending)

    def _next_batch(self) -> list[Pending] | None:
        """The oldest request and up to ``max_batch - 1`` others with its key, once full or its wait is over."""
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            key = self._pending[0].request.batch_key
            deadline = self._pending[0].arrived + self.max_wait_s
            while True:
                same = [p for p in self._pending if p.request.batch_key == key][: self.max_batch]
                remaining = deadline - time.monotonic()
                if len(same) >= self.max_batch or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            taken = {id(p) for p in same}
            self._pending = [p for p in self._pending if id(p) not in taken]
            return same

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._execute(batch)

    def _execute(self, batch: list[Pending]) -> None:
        started = time.monotonic()
        for p in batch:
            p.started, p.batch_size = started, len(batch)
        try:
            images = self.backend.generate([p.request for p in batch], self._progress_for(batch))
            if len(images) != len(batch):
                raise RuntimeError(f"backend returned {len(images)} images for {len(batch)} requests")
        except OutOfMemory as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
            else:
                self.stats["oom_splits"] += 1
                half = len(batch) // 2
                log.warning("out of memory at batch %d: splitting into %d + %d", len(batch), half, len(batch) - half)
                self._execute(batch[:half])
                self._execute(batch[half:])
            return
        except Exception as exc:  # a backend bug must fail its requests, never the batcher thread
            log.exception("backend failed on a batch of %d", len(batch))
            for p in batch:
                p.future.set_exception(exc)
            return
        finally:
            for p in batch:
                if p.request_id:
                    self.progress.pop(p.request_id, None)
        elapsed = time.monotonic() - started
        self.stats["batches"] += 1
        self.stats["images"] += len(batch)
        self.stats["busy_s"] += elapsed
        if self.on_batch:
            self.on_batch(len(batch), elapsed)
        for p, image in zip(batch, images):
            p.future.set_result(image)

    def _progress_for(self, batch: list[Pending]) -> Callable[[int, int], None]:
        ids = [p.request_id for p in batch if p.request_id]

        def progress(step: int, steps: int) -> None:
            for request_id in ids:
                self.progress[request_id] = (step, steps)

        return progress

    def snapshot(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, "max_wait_ms": self.max_wait_s * 1000, "depth": self.depth, **self.stats}
