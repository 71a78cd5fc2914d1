"""``Ticket`` and ``Work``: a waiting HTTP request, and the image it waits for.

Identical requests in flight at the same time are computed once (single flight): each HTTP request gets
its own :class:`Ticket` (its own future, request id, job id and deadline), and tickets for the same
pixels share one :class:`Work`. A ticket can be withdrawn (cancelled, or its deadline passed) while its
work has not reached the GPU; a work whose tickets are all gone is dropped before it costs anything.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .backends.base import InferenceRequest


@dataclass(eq=False)
class Work:
    """One image to compute, for one or more tickets."""

    request: InferenceRequest
    group: Hashable  #: works share a batch only when their groups are equal
    tickets: list[Ticket] = field(default_factory=list)
    arrived: float = field(default_factory=time.monotonic)
    started: float | None = None
    batch_size: int = 0
    batch_id: str | None = None

    def expired(self, now: float) -> bool:
        """Every ticket has a deadline (unix time) and every one has passed."""
        return bool(self.tickets) and all(t.deadline is not None and t.deadline <= now for t in self.tickets)

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        for ticket in self.tickets:
            if ticket.future.done():
                continue
            if error is not None:
                ticket.future.set_exception(error)
            else:
                ticket.future.set_result(result)


@dataclass(eq=False)
class Ticket:
    """One HTTP request waiting for an image; wait on ``.future``."""

    request: InferenceRequest
    request_id: str | None = None
    job_id: str | None = None
    deadline: float | None = None  #: unix time (``X-Zimg-Deadline``)
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)
    work: Work | None = None
    shared: bool = False  #: joined a work another ticket had started (single flight)

    @property
    def started(self) -> float | None:
        return self.work.started if self.work else None

    @property
    def batch_size(self) -> int:
        return self.work.batch_size if self.work else 0

    @property
    def batch_id(self) -> str | None:
        return self.work.batch_id if self.work else None


#: The name the first version of the batcher used.
Pending = Ticket
