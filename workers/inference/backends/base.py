"""The contract every inference backend implements.

A backend is a small class: it turns a *batch* of requests that share one
(width, height, num_inference_steps) into one PIL image per request, in order.
The server's :class:`~workers.inference.batcher.Batcher` decides what goes in a
batch; a backend never sees mixed sizes.

Two optional hooks let a backend shape batches without knowing the batcher:
``admit(request)`` measures a request before it is queued (the real model counts
prompt tokens and refuses a prompt it would truncate) and returns a *group*:
requests share a batch only when their groups are equal (flash attention backends
need equal prompt-token buckets, so no attention mask is ever built).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from PIL import Image

from zimg_queue.request import GenerateRequest

#: Called by a backend after each denoising step: ``progress(step_done, total_steps)``.
ProgressFn = Callable[[int, int], None]


class OutOfMemory(RuntimeError):
    """The accelerator ran out of memory for this batch.

    The batcher lowers the learned capacity of this shape and re-runs the members in
    smaller batches; a single request that still does not fit is answered
    ``500 {"detail": "CUDA out of memory ..."}`` like the upstream Z-Image-Turbo server.
    """


class DeviceFailure(RuntimeError):
    """The accelerator is in a state no retry can fix (illegal memory access, device-side assert, ECC error).

    CUDA errors are sticky: every later kernel in the process fails too. The server answers 503 to
    everything, ``/healthz`` says so, and the process exits non-zero so its supervisor restarts it.
    """


@dataclass(frozen=True)
class InferenceRequest(GenerateRequest):
    """One image to make, as a backend sees it: the validated request (the upstream ``POST /v1/generate`` fields)."""

    @property
    def batch_key(self) -> tuple[int, int, int]:
        """Requests may share a pipeline call only when this key is equal."""
        return (self.width, self.height, self.num_inference_steps)

    @property
    def shape(self) -> tuple[int, int]:
        """What memory use depends on: the learned batch capacity is kept per shape."""
        return (self.width, self.height)

    @property
    def flight_key(self) -> InferenceRequest:
        """Requests with equal keys make the same pixels (the encoding is the HTTP thread's business)."""
        return self if self.output_format == "png" else _replace(self, output_format="png")


def _replace(request: InferenceRequest, **changes: Any) -> InferenceRequest:
    from dataclasses import replace

    return replace(request, **changes)


class Backend(Protocol):
    """What :mod:`workers.inference.server` needs from a backend."""

    #: Short name reported in every response (``X-Zimg-Backend`` header and ``/healthz``).
    name: ClassVar[str]

    def generate(self, batch: Sequence[InferenceRequest], progress: ProgressFn | None = None) -> list[Image.Image]:
        """Make one image per request, in order. Raise :class:`OutOfMemory` when the batch does not fit."""
        ...

    def health(self) -> dict[str, Any]:
        """Facts for ``/healthz``: at least ``{"backend": name, "loaded": bool}``."""
        ...

    def close(self) -> None:
        """Free resources at shutdown."""
        ...


def admit(backend: Backend, request: InferenceRequest) -> Hashable:
    """The backend's ``admit`` hook when it has one (may raise ``ValidationError``), else no group."""
    hook = getattr(backend, "admit", None)
    return hook(request) if hook is not None else None
