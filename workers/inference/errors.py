"""What went wrong in a batch: out of memory, a broken device, or an ordinary error.

The three need different answers. Out of memory depends on the batch size: the
batcher learns a smaller capacity and re-runs the members. A broken device (CUDA
errors are sticky: after an illegal memory access every later kernel fails) cannot be
retried in this process: the server reports unhealthy and exits so its supervisor
restarts it. Anything else is probably one request's fault: the batcher isolates it.

Classification works on the exception's class name and message, so this module needs no
torch import and also recognises errors raised from cuBLAS and cuDNN, which torch
reports as plain ``RuntimeError``s.
"""

from __future__ import annotations

from typing import Literal

from .backends.base import DeviceFailure, OutOfMemory

Kind = Literal["oom", "fatal", "error"]

#: Allocation failures: the batch did not fit; a smaller one may.
OOM_MARKERS = (
    "out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cudnn_status_not_enough_workspace",
    "hip out of memory",
)
#: Sticky device errors: nothing more will run in this process.
FATAL_MARKERS = (
    "cuda error",
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "uncorrectable ecc",
    "cublas_status_execution_failed",
    "cublas_status_internal_error",
    "cudnn_status_execution_failed",
    "cudaerror",
    "nccl error",
    "hip error",
)


def classify(exc: BaseException) -> Kind:
    """``oom``, ``fatal`` or ``error`` for an exception raised by a backend."""
    if isinstance(exc, OutOfMemory):
        return "oom"
    if isinstance(exc, DeviceFailure):
        return "fatal"
    names = {cls.__name__ for cls in type(exc).__mro__}
    text = str(exc).lower()
    if "OutOfMemoryError" in names or any(marker in text for marker in OOM_MARKERS):
        return "oom"
    if "AcceleratorError" in names or any(marker in text for marker in FATAL_MARKERS):
        return "fatal"
    return "error"


def first_line(exc: BaseException) -> str:
    """The exception's first line (torch's OOM messages go on for a paragraph)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def as_out_of_memory(exc: BaseException) -> OutOfMemory:
    """An :class:`OutOfMemory` whose message starts the way the upstream server's does."""
    message = first_line(exc)
    return OutOfMemory(message if "out of memory" in message.lower() else f"CUDA out of memory: {message}")


class Rejected(Exception):
    """A request the batcher would not take or did not run; ``status`` is the HTTP answer."""

    status = 503
    outcome = "busy"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(Rejected):
    """More requests are waiting than ``--max-queue`` allows: the client should come back later."""


class Unhealthy(Rejected):
    """The device failed; this process is going away."""

    outcome = "error"


class DeadlineExceeded(Rejected):
    """The request's deadline (``X-Zimg-Deadline``) passed before it reached the GPU."""

    status = 504
    outcome = "expired"


class Cancelled(Rejected):
    """``DELETE /v1/requests/<job id>`` dropped the request before it reached the GPU."""

    status = 409
    outcome = "cancelled"
