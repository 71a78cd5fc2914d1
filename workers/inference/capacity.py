"""``Capacity``: how many images of one shape a batch may hold, learned from out-of-memory errors.

Two limits apply to a batch of one shape (width, height):

* up front, ``--max-batch`` and the ``--max-batch-pixels`` budget (the sum of the batch's pixels), so big
  sizes run in small batches without ever trying a large one;
* learned: after an out-of-memory error at batch B, the shape is capped at the largest batch known to
  have fit, or at 1 when none has yet (a request alone is what the server ran before batching). On a real
  GPU the error often comes in the VAE decode, after all the denoising, so every failed try throws a
  whole batch of GPU work away; halving step by step (8, 4, 2) would pay for that twice. The cap then
  grows again, doubling but staying below the smallest size known to fail, only after ``probe_after``
  successful batches in a row at the current cap, so memory that was only briefly short is won back
  without probing on every batch.

Once the cap is just below the smallest size that failed, that size itself is tried again, but only after
``probe_after * 2**k`` successes in a row, k being how many times it has failed: an out-of-memory error
can be a one-off (fragmentation, another process holding memory for a moment), and one bad moment must not
cost the shape its batch size for the life of the server. The doubling wait is exponential backoff: a size
that truly never fits costs about log2(batches / probe_after) failed calls, not one every ``probe_after``
batches. When it fits, the failure is forgotten and the cap doubles on towards ``max_batch`` as before.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

Shape = tuple[int, int]


@dataclass
class ShapeState:
    fit: int = 0  #: the largest batch that ran without running out of memory (0: none yet)
    fail: int = 0  #: the smallest batch that ran out of memory (0: none yet, or it has fit since)
    fails: int = 0  #: how many times ``fail`` itself ran out of memory: the backoff's exponent
    cap: int = 0  #: the current learned cap (0: no cap learned)
    streak: int = 0  #: successful batches in a row at the current cap


class Capacity:
    """Per-shape batch limits; thread-safe, though only the GPU thread writes."""

    def __init__(self, max_batch: int, max_batch_pixels: int = 0, probe_after: int = 8) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.max_batch_pixels = max_batch_pixels
        self.probe_after = probe_after
        self._shapes: dict[Shape, ShapeState] = {}
        self._lock = threading.Lock()

    def static_limit(self, shape: Shape) -> int:
        """``--max-batch``, lowered by the pixel budget (never below 1: one image always gets its try)."""
        if self.max_batch_pixels <= 0:
            return self.max_batch
        return max(1, min(self.max_batch, self.max_batch_pixels // (shape[0] * shape[1])))

    def limit(self, shape: Shape) -> int:
        """How many requests of ``shape`` the next batch may hold."""
        static = self.static_limit(shape)
        with self._lock:
            state = self._shapes.get(shape)
            return min(static, state.cap) if state and state.cap else static

    def record_oom(self, shape: Shape, size: int) -> int:
        """A batch of ``size`` ran out of memory: cap the shape at what fit (or 1). Returns the new cap."""
        with self._lock:
            state = self._shapes.setdefault(shape, ShapeState())
            if size == state.fail:
                state.fails += 1  # tried again after the backoff and failed again: wait twice as long next time
            elif not state.fail or size < state.fail:
                state.fail, state.fails = size, 1
            if state.fit >= state.fail:  # what fit before does not fit now (fragmentation, another process)
                state.fit = 0
            state.cap = max(1, state.fit if state.fit else 1)
            state.streak = 0
            return state.cap

    def record_success(self, shape: Shape, size: int) -> None:
        """A batch of ``size`` fit; after a run of them at the cap, let the next batch try more.

        The run is ``probe_after`` batches, or ``probe_after * 2**fails`` when the next size up is the one
        that failed (exponential backoff: see the module docstring).
        """
        with self._lock:
            state = self._shapes.get(shape)
            if state is None or not state.cap:
                return
            state.fit = max(state.fit, size)
            if state.fail and size >= state.fail:  # what failed once fits now: the failure was a one-off
                state.fail = state.fails = 0
            if size < state.cap:
                return  # a partial batch says nothing about the cap
            state.streak += 1
            if state.fail and state.cap >= state.fail - 1:
                needed, target = self.probe_after << state.fails, state.fail
            else:
                needed = self.probe_after
                target = min(2 * state.cap, state.fail - 1 if state.fail else self.max_batch)
            if state.streak < needed:
                return
            state.streak = 0
            state.cap = max(state.cap, min(target, self.max_batch))

    def snapshot(self) -> dict[str, dict[str, int]]:
        """The learned state, for ``/healthz``: ``{"1024x1024": {"cap": 2, "fit": 2, "fail": 4}}``."""
        with self._lock:
            return {f"{w}x{h}": {"cap": s.cap, "fit": s.fit, "fail": s.fail} for (w, h), s in self._shapes.items()}
