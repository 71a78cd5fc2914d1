"""The real backend: Tongyi-MAI's Z-Image-Turbo through diffusers' ``ZImagePipeline``.

torch and diffusers are imported inside the class, never at module level, so this module
costs nothing until ``--backend zimage`` is chosen; producers and web apps never need torch.

Fidelity. One pipeline call serves a whole batch: the prompts go in as a list, each request gets its
own **CPU** ``torch.Generator`` seeded with its seed (CPU generators give the same noise on every GPU
stack; CUDA ones do not), and the VAE decodes one image at a time (``vae.enable_slicing()``, on by
default: decoding a whole bf16 batch at once changed pixels by up to 11/255 against the same request
alone). Prompts are measured in tokens: a prompt the pipeline would truncate (``max_sequence_length``
512, the chat template included) is refused with a 422 that says its count and the limit.

Speed options, all off by default until a GPU measurement turns them on: ``attention`` (diffusers'
attention backend; any backend but plain SDPA gets batches grouped by 32-token caption bucket, so the
transformer never builds the attention mask that flash kernels refuse), ``compile`` (regional
``compile_repeated_blocks`` with dynamic shapes and a raised recompile limit), ``warmup_sizes`` (sizes
run once at start-up, at batch 1 and, when compiling, at ``max_batch``).
"""

from __future__ import annotations

import copy
import gc
import threading
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

from PIL import Image

from zimg_queue.request import ValidationError

from ..errors import as_out_of_memory, classify, first_line
from .base import DeviceFailure, InferenceRequest, ProgressFn

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
#: The pipeline's default, what Z-Image was trained with; longer prompts are refused, not cut.
MAX_SEQUENCE_LENGTH = 512
#: The transformer pads captions to multiples of this; equal buckets in a batch mean no attention mask.
SEQ_MULTI_OF = 32
#: Attention backends that accept a mask: batches need no grouping.
MASK_OK = frozenset({"native", "_native_math", "_native_efficient", "_native_cudnn"})
RECOMPILE_LIMIT = 64


def parse_sizes(text: str | Sequence[str] | None) -> list[tuple[int, int]]:
    """``"1024x1024,512"`` -> ``[(1024, 1024), (512, 512)]`` (width, height)."""
    if not text:
        return []
    parts = text.split(",") if isinstance(text, str) else list(text)
    sizes = []
    for part in (p.strip().lower() for p in parts if p.strip()):
        width, _, height = part.partition("x")
        sizes.append((int(width), int(height or width)))
    return sizes


class ZImageBackend:
    """Loads the pipeline once at start-up and runs one pipeline call per batch."""

    name: ClassVar[str] = "zimage"

    def __init__(
        self,
        model: str,
        device: str | None = None,
        dtype: str | None = None,
        warmup: bool = True,
        *,
        attention: str | None = None,
        compile: bool | str = False,
        warmup_sizes: str | Sequence[str] | None = None,
        max_batch: int = 8,
        vae_slicing: bool = True,
    ) -> None:
        import torch
        from diffusers import ZImagePipeline

        self.model = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # bf16 is what the weights ship in (≈ 20.5 GB on the GPU); CPUs are slow and inexact in bf16.
        wanted = dtype or ("bfloat16" if self.device.startswith("cuda") else "float32")
        if wanted.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {wanted!r}; use one of {sorted(_DTYPES)}")
        self.dtype = _DTYPES[wanted.lower()]
        self.attention = attention or "native"
        self.compile = compile
        self.vae_slicing = vae_slicing
        self.max_batch = max_batch
        self._torch = torch
        self._lock = threading.Lock()
        pipe: Any = ZImagePipeline.from_pretrained(model, dtype=getattr(torch, self.dtype))
        self._pipe: Any = pipe.to(self.device)
        self._pipe.set_progress_bar_config(disable=True)
        if vae_slicing:
            self._pipe.vae.enable_slicing()
        if self.attention != "native":
            self._pipe.transformer.set_attention_backend(self.attention)
        if compile:
            self._compile("inductor" if compile is True else str(compile))
        # Counting tokens happens on HTTP threads; the pipeline's own tokenizer is busy on the GPU thread.
        self._tokenizer = copy.deepcopy(self._pipe.tokenizer)
        self._tokenizer_lock = threading.Lock()
        self.warmup_sizes = parse_sizes(warmup_sizes) or [(64, 64)]
        if warmup:
            self.warm_up()

    def _compile(self, backend: str) -> None:
        """Regional compilation: the 30 repeated transformer blocks, once, for every batch and caption length."""
        import torch._dynamo

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        self._pipe.transformer.compile_repeated_blocks(backend=backend, dynamic=True)

    def warm_up(self) -> None:
        """Pay for the CUDA context, kernel selection (and compilation) at start-up, not on a user's request.

        Every warm-up size runs once at batch 1; when compiling, also at ``max_batch`` (dynamic shapes then
        cover the sizes in between).
        """
        batches = sorted({1, self.max_batch}) if self.compile else [1]
        for width, height in self.warmup_sizes:
            for batch in batches:
                prompts = [InferenceRequest(prompt="warm-up", width=width, height=height, num_inference_steps=1,
                                            seed=i) for i in range(batch)]  # fmt: skip
                self.generate(prompts)

    # --- admission (HTTP threads) ---------------------------------------------------------------

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens the text encoder would see for ``prompt``: the chat template the pipeline applies included."""
        messages = [{"role": "user", "content": prompt}]
        with self._tokenizer_lock:
            text = self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
            )
            return len(self._tokenizer(text)["input_ids"])

    def admit(self, request: InferenceRequest) -> Hashable:
        """Refuse a prompt the pipeline would cut; the batch group is the caption bucket when masks are refused."""
        tokens = self.prompt_tokens(request.prompt)
        if tokens > MAX_SEQUENCE_LENGTH:
            raise ValidationError.single(
                "prompt",
                f"is {tokens} tokens with the chat template; the model reads at most {MAX_SEQUENCE_LENGTH}"
                " (shorten the prompt)",
            )
        return None if self.attention in MASK_OK else -(-tokens // SEQ_MULTI_OF)

    # --- generation (the GPU thread) -------------------------------------------------------------

    def generate(self, batch: Sequence[InferenceRequest], progress: ProgressFn | None = None) -> list[Image.Image]:
        """One image per request, in order; raises :class:`OutOfMemory` or :class:`DeviceFailure`."""
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
            # CPU generators: the same noise on every machine (CUDA generator streams differ across stacks).
            "generator": [torch.Generator("cpu").manual_seed(r.seed) for r in batch],
            "max_sequence_length": MAX_SEQUENCE_LENGTH,
            "output_type": "pil",
            "callback_on_step_end": on_step_end,
        }
        if guidance > 0:
            kwargs["negative_prompt"] = [r.negative_prompt for r in batch]
        with self._lock:
            try:
                return list(self._pipe(**kwargs).images)
            except Exception as exc:
                kind = classify(exc)
                if kind == "error":
                    raise
                if kind == "fatal":
                    raise DeviceFailure(first_line(exc)) from exc
                error = as_out_of_memory(exc)
            # Leaving the except block drops the traceback and the activations its frames held,
            # so empty_cache can actually hand that memory back before the batcher retries.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        raise error

    def health(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.name,
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "loaded": self._pipe is not None,
            "attention": self.attention,
            "compile": self.compile,
            "vae_slicing": self.vae_slicing,
            "max_sequence_length": MAX_SEQUENCE_LENGTH,
        }
        if self.device.startswith("cuda") and self._torch.cuda.is_available():
            # Since start-up: weights + the largest batch's activations (what the benchmark reports).
            info["memory_bytes"] = self._torch.cuda.memory_allocated(self.device)
            info["peak_memory_bytes"] = self._torch.cuda.max_memory_allocated(self.device)
        return info

    def close(self) -> None:
        """Drop the pipeline and return its GPU memory (and diffusers' process-wide attention backend)."""
        with self._lock:
            if self._pipe is not None and self.attention != "native":
                from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

                _AttentionBackendRegistry.set_active_backend(AttentionBackendName.NATIVE)
            self._pipe = None
            gc.collect()
            if self._torch.cuda.is_available():
                self._torch.cuda.empty_cache()
