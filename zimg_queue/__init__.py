"""zimg-queue: Z-Image-Turbo behind an RQ job queue.

The common case is one call::

    import zimg_queue
    job_id = zimg_queue.enqueue("a cat on a windowsill", width=768, height=768)
    status = zimg_queue.wait(job_id, timeout=60)  # status["timed_out"] is true if 60 s ran out first
    status["result"]["path"]

Knobs live on :class:`Producer` and :class:`Settings`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from .logs import use_standard_logging_until_configured
from .queue import Producer
from .request import GenerateRequest, ValidationError
from .settings import Settings

use_standard_logging_until_configured()

__all__ = ["GenerateRequest", "Producer", "Settings", "ValidationError", "enqueue", "get_status", "wait", "cancel"]


@lru_cache(maxsize=1)
def default_producer() -> Producer:
    """The producer ``Producer(settings=Settings.from_env())`` would make: the same Redis, chosen the same way."""
    return Producer(settings=Settings.from_env())


def enqueue(request: Any, **fields: Any) -> str:
    return default_producer().enqueue(request, **fields)


def get_status(job_id: str) -> dict[str, Any]:
    """A job's status dict. (Not ``status``: that name is the ``zimg_queue.status`` module.)"""
    return default_producer().status(job_id)


def wait(job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    return default_producer().wait(job_id, timeout)


def cancel(job_id: str) -> dict[str, Any]:
    return default_producer().cancel(job_id)
