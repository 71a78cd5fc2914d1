"""The contract every inference backend implements.

A backend is a small class: it turns a *batch* of requests that share one
(width, height, num_inference_steps) into one PIL image per request, in order.
The server's :class:`~workers.inference.batcher.Batcher` decides what goes in a
batch; a backend never sees mixed sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from PIL import Image

from zimg_queue.request import GenerateRequest

#: Called by a backend after each denoising step: ``progress(step_done, total_steps)``.
ProgressFn = Callable[[int, int], None]


class OutOfMemory(RuntimeError):
    """The accelerator ran out of memory for this batch.

    The batcher reacts by splitting the batch; a single request that still does
    not fit is answered ``500 {"detail": "CUDA out of memory ..."}`` like the
    upstream Z-Image-Turbo server.
    """


@dataclass(frozen=True)
class InferenceRequest(GenerateRequest):
    """One image to make, as a backend sees it: the validated request (the upstream ``POST /v1/generate`` fields)."""

    @property
    def batch_key(self) -> tuple[int, int, int]:
        """Requests may share a pipeline call only when this key is equal."""
        return (self.width, self.height, self.num_inference_steps)


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
