"""``BusyClock``: the share of a recent window the backend spent generating (``zimg_gpu_busy_ratio``).

The GPU thread calls :meth:`start` and :meth:`stop` around every backend call; readers ask for the busy
share of the last ``window`` seconds, the batch in progress included. Intervals older than the window
are dropped, so memory stays small however long the server runs.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class BusyClock:
    def __init__(self, window: float = 60.0, clock=time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._done: deque[tuple[float, float]] = deque()
        self._since: float | None = None
        self._born = clock()
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self._since = self._clock()

    def stop(self) -> None:
        with self._lock:
            if self._since is not None:
                self._done.append((self._since, self._clock()))
                self._since = None

    def ratio(self) -> float:
        """Busy seconds in the last ``window`` over the window (or over the uptime, when shorter)."""
        now = self._clock()
        begin = max(now - self.window, self._born)
        with self._lock:
            while self._done and self._done[0][1] <= begin:
                self._done.popleft()
            spans = list(self._done) + ([(self._since, now)] if self._since is not None else [])
        busy = sum(max(0.0, end - max(start, begin)) for start, end in spans)
        span = now - begin
        return min(1.0, busy / span) if span > 0 else 0.0
