"""The contract every inference backend implements.

A backend is a small class: it turns a *batch* of requests that share one
(width, height, num_inference_steps) into one PIL image per request, in order.
The server's :class:`~workers.inference.batcher.Batcher` decides what goes in a
batch; a backend never sees mixed sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol

from PIL import Image

#: Called by a backend after each denoising step: ``progress(step_done, total_steps)``.
ProgressFn = Callable[[int, int], None]


class OutOfMemory(RuntimeError):
    """The accelerator ran out of memory for this batch.

    The batcher reacts by splitting the batch; a single request that still does
    not fit is answered ``500 {"detail": "CUDA out of memory ..."}`` like the
    upstream Z-Image-Turbo server.
    """


@dataclass(frozen=True)
class InferenceRequest:
    """One image to make: the upstream ``POST /v1/generate`` fields, already validated."""

    prompt: str
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    num_inference_steps: int = 8
    guidance_scale: float = 0.0
    seed: int = 0
    output_format: str = "png"

    @property
    def batch_key(self) -> tuple[int, int, int]:
        """Requests may share a pipeline call only when this key is equal."""
        return (self.width, self.height, self.num_inference_steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
