"""The real backend: Tongyi-MAI's Z-Image-Turbo through diffusers' ``ZImagePipeline``.

torch and diffusers are imported inside the class, never at module level, so this module
costs nothing until ``--backend zimage`` is chosen; producers and web apps never need torch.

One pipeline call serves a whole batch: the prompts go in as a list and each request gets
its own ``torch.Generator`` seeded with its seed, so a request gives the same image whether
it ran alone or batched (on CPU fp32 they match to ~1e-6; on CUDA bf16 to within rounding).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from PIL import Image

from .base import InferenceRequest, OutOfMemory, ProgressFn

#: Accepted spellings of ``dtype`` -> torch attribute name.
_DTYPES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
}


def _is_oom(exc: BaseException) -> bool:
    """torch raises ``torch.cuda.OutOfMemoryError``; some kernels raise a plain RuntimeError instead."""
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


class ZImageBackend:
    """Loads the pipeline once at start-up and runs one pipeline call per batch."""

    name: ClassVar[str] = "zimage"

    def __init__(self, model: str, device: str | None = None, dtype: str | None = None, warmup: bool = True) -> None:
        import torch
        from diffusers import ZImagePipeline

        self.model = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # bf16 is what the weights ship in (≈ 20.5 GB on the GPU); CPUs are slow and inexact in bf16.
        wanted = dtype or ("bfloat16" if self.device.startswith("cuda") else "float32")
        if wanted.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {wanted!r}; use one of {sorted(_DTYPES)}")
        self.dtype = _DTYPES[wanted.lower()]
        self._torch = torch
        self._lock = threading.Lock()
        pipe: Any = ZImagePipeline.from_pretrained(model, dtype=getattr(torch, self.dtype))
        self._pipe: Any = pipe.to(self.device)
        self._pipe.set_progress_bar_config(disable=True)
        if warmup:
            # The first call pays for CUDA context, kernel selection and allocator growth; pay it now,
            # not on the first user's request.
            self.generate([InferenceRequest(prompt="warm-up", width=64, height=64, num_inference_steps=1)])

    def generate(self, batch: Sequence[InferenceRequest], progress: ProgressFn | None = None) -> list[Image.Image]:
        """One image per request, in order; raises :class:`OutOfMemory` so the batcher can split the batch."""
        if not batch:
            return []
        if len({r.batch_key for r in batch}) != 1:
            raise ValueError("a batch must share width, height and num_inference_steps")
        # guidance_scale is not part of batch_key (Turbo always uses 0.0), so run each value as its own call.
        images: dict[int, Image.Image] = {}
        for guidance in dict.fromkeys(r.guidance_scale for r in batch):
            index = [i for i, r in enumerate(batch) if r.guidance_scale == guidance]
            images.update(zip(index, self._call([batch[i] for i in index], guidance, progress), strict=True))
        return [images[i] for i in range(len(batch))]

    def _call(
        self, batch: Sequence[InferenceRequest], guidance: float, progress: ProgressFn | None
    ) -> list[Image.Image]:
        torch = self._torch
        first = batch[0]
        steps = first.num_inference_steps

        def on_step_end(pipe: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if progress is not None:
                progress(i + 1, steps)
            return callback_kwargs

        kwargs: dict[str, Any] = {
            # The pipeline rewrites this list in place (chat template): it must be a fresh list.
            "prompt": [r.prompt for r in batch],
            "height": first.height,
            "width": first.width,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "generator": [torch.Generator(self.device).manual_seed(r.seed) for r in batch],
            "output_type": "pil",
            "callback_on_step_end": on_step_end,
        }
        if guidance > 0:
            kwargs["negative_prompt"] = [r.negative_prompt for r in batch]
        message = ""
        with self._lock:
            try:
                return list(self._pipe(**kwargs).images)
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                message = (str(exc).strip().splitlines() or ["CUDA out of memory"])[0]
            # Leaving the except block drops the traceback and the activations its frames held,
            # so empty_cache can actually hand that memory back before the batcher retries.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        raise OutOfMemory(message if "out of memory" in message.lower() else f"CUDA out of memory: {message}")

    def health(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.name,
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "loaded": self._pipe is not None,
        }
        if self.device.startswith("cuda") and self._torch.cuda.is_available():
            # Since start-up: weights + the largest batch's activations (what the benchmark reports).
            info["memory_bytes"] = self._torch.cuda.memory_allocated(self.device)
            info["peak_memory_bytes"] = self._torch.cuda.max_memory_allocated(self.device)
        return info

    def close(self) -> None:
        """Drop the pipeline and return its GPU memory."""
        with self._lock:
            self._pipe = None
            gc.collect()
            if self._torch.cuda.is_available():
                self._torch.cuda.empty_cache()
