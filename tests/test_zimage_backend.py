"""The ``zimage`` backend on CPU, with the tiny random-weight Z-Image pipeline (no hub, no GPU)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

# Both modules import torch/diffusers lazily, so importing them needs no inference extra.
from workers.inference.backends.base import InferenceRequest, OutOfMemory
from workers.inference.backends.zimage import ZImageBackend

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")


def req(seed: int = 0, width: int = 64, height: int = 64, steps: int = 2, prompt: str = "a cat") -> InferenceRequest:
    return InferenceRequest(prompt=prompt, width=width, height=height, num_inference_steps=steps, seed=seed)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize(("width", "height"), [(64, 64), (128, 64)])
def test_image_of_the_asked_size(zimage_backend: ZImageBackend, width: int, height: int) -> None:
    [image] = zimage_backend.generate([req(width=width, height=height)])
    assert image.size == (width, height)
    assert image.mode == "RGB"
    assert pixels(image).std() > 0  # not a blank (NaN -> black) image


def test_batch_equals_single_runs(zimage_backend: ZImageBackend) -> None:
    seeds = [1, 2, 3]
    prompts = ["a cat", "a dog on a beach", "城市夜景"]
    batched = zimage_backend.generate([req(seed=s, prompt=p) for s, p in zip(seeds, prompts, strict=True)])
    single = [zimage_backend.generate([req(seed=s, prompt=p)])[0] for s, p in zip(seeds, prompts, strict=True)]
    assert len(batched) == 3
    for b, s in zip(batched, single, strict=True):
        assert np.abs(pixels(b) - pixels(s)).max() <= 1


def test_mixed_guidance_in_one_batch(zimage_backend: ZImageBackend) -> None:
    """guidance_scale is not in batch_key, so a batch may mix it; each request still gets its own image."""
    guided = InferenceRequest(
        prompt="a dog",
        negative_prompt="blurry",
        guidance_scale=3.0,
        width=64,
        height=64,
        num_inference_steps=2,
        seed=2,
    )
    batch = [req(seed=1), guided, req(seed=3)]
    batched = zimage_backend.generate(batch)
    for b, r in zip(batched, batch, strict=True):
        assert np.abs(pixels(b) - pixels(zimage_backend.generate([r])[0])).max() <= 1


def test_seed_decides_the_image(zimage_backend: ZImageBackend) -> None:
    a, b, c = (zimage_backend.generate([req(seed=s)])[0] for s in (7, 7, 8))
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_progress_once_per_step(zimage_backend: ZImageBackend) -> None:
    calls: list[tuple[int, int]] = []
    zimage_backend.generate([req(seed=1, steps=4), req(seed=2, steps=4)], progress=lambda k, n: calls.append((k, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_mixed_sizes_are_refused(zimage_backend: ZImageBackend) -> None:
    with pytest.raises(ValueError):
        zimage_backend.generate([req(width=64), req(width=128)])


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA out of memory"),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    ],
)
def test_oom_becomes_out_of_memory(
    zimage_backend: ZImageBackend, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    pipeline_class = type(zimage_backend._pipe)
    real_call = pipeline_class.__call__

    def call(self, *args, **kwargs):
        if len(kwargs["prompt"]) > 1:
            raise error
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "__call__", call)
    with pytest.raises(OutOfMemory, match="out of memory"):
        zimage_backend.generate([req(seed=1), req(seed=2)])
    # A batch of one still fits, and the lock was released.
    assert zimage_backend.generate([req(seed=1)])[0].size == (64, 64)


def test_other_errors_pass_through(zimage_backend: ZImageBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    def call(self, *args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(type(zimage_backend._pipe), "__call__", call)
    with pytest.raises(RuntimeError, match="shape mismatch") as info:
        zimage_backend.generate([req()])
    assert not isinstance(info.value, OutOfMemory)


def test_health(zimage_backend: ZImageBackend, tiny_model: Path) -> None:
    assert zimage_backend.health() == {
        "backend": "zimage",
        "model": str(tiny_model),
        "device": "cpu",
        "dtype": "float32",
        "loaded": True,
        "attention": "native",
        "compile": False,
        "vae_slicing": True,
        "max_sequence_length": 512,
    }


# --- issue 14: fidelity -------------------------------------------------------------------------------------

MIXED = ["a cat", "a dog on a beach at dusk, golden light, " * 3, "城市夜景", "x" * 100]  # 3 caption buckets


def spy_calls(monkeypatch: pytest.MonkeyPatch, backend: ZImageBackend) -> list[dict]:
    pipeline_class = type(backend._pipe)
    real_call = pipeline_class.__call__
    seen: list[dict] = []

    def call(self, *args, **kwargs):
        seen.append(dict(kwargs))
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "__call__", call)
    return seen


@pytest.fixture(scope="module")
def bf16_backend(tiny_model: Path):
    backend = ZImageBackend(str(tiny_model), dtype="bf16")  # the shipped default: VAE slicing on
    yield backend
    backend.close()


def test_vae_slicing_is_on_by_default(zimage_backend: ZImageBackend) -> None:
    assert zimage_backend._pipe.vae.use_slicing is True


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_batch_with_mixed_prompt_lengths_equals_the_same_requests_alone(
    zimage_backend: ZImageBackend, bf16_backend: ZImageBackend, dtype: str
) -> None:
    """Without VAE slicing, bf16 at 256x256 differed by 13/255 here; with it, by 0."""
    backend = bf16_backend if dtype == "bf16" else zimage_backend
    batch = [req(seed=i, prompt=p, width=256, height=256) for i, p in enumerate(MIXED)]
    together = backend.generate(batch)
    for image, r in zip(together, batch, strict=True):
        assert np.abs(pixels(image) - pixels(backend.generate([r])[0])).max() <= 1


def test_generators_are_cpu_and_the_prompt_limit_is_passed(zimage_backend, monkeypatch) -> None:
    seen = spy_calls(monkeypatch, zimage_backend)
    zimage_backend.generate([req(seed=1), req(seed=2)])
    [kwargs] = seen
    assert [g.device.type for g in kwargs["generator"]] == ["cpu", "cpu"]
    assert [g.initial_seed() for g in kwargs["generator"]] == [1, 2]
    assert kwargs["max_sequence_length"] == 512


def test_a_prompt_the_model_would_truncate_is_refused_with_its_token_count(zimage_backend) -> None:
    from zimg_queue.request import ValidationError

    # The tiny tokenizer is byte-level: one token per byte, plus the chat template's.
    fits = zimage_backend.prompt_tokens("x" * 400)
    assert 400 < fits <= 512
    zimage_backend.admit(req(prompt="x" * 400))
    with pytest.raises(ValidationError) as info:
        zimage_backend.admit(req(prompt="x" * 600))
    [error] = info.value.errors
    assert error["field"] == "prompt"
    assert f"{zimage_backend.prompt_tokens('x' * 600)} tokens" in error["message"] and "512" in error["message"]


def test_an_unrecoverable_cuda_error_becomes_device_failure(zimage_backend, monkeypatch) -> None:
    from workers.inference.backends.base import DeviceFailure

    def call(self, *args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(type(zimage_backend._pipe), "__call__", call)
    with pytest.raises(DeviceFailure, match="illegal memory access"):
        zimage_backend.generate([req()])


# --- issue 14: speed options, correct on CPU ------------------------------------------------------------------


class Held:
    """A backend wrapper whose 128-wide calls wait for ``release``: what is submitted meanwhile queues together."""

    def __init__(self, inner: ZImageBackend) -> None:
        self.inner, self.name, self.release = inner, inner.name, threading.Event()

    def admit(self, request):
        return self.inner.admit(request)

    def generate(self, batch, progress=None):
        if batch[0].width == 128:
            self.release.wait(30)
        return self.inner.generate(batch, progress)

    def health(self):
        return self.inner.health()

    def close(self) -> None:
        pass


@pytest.fixture
def flash_backend(tiny_model: Path):
    """``--attention _native_flash``: torch's flash SDPA kernel, which runs on CPU too and refuses masks."""
    backend = ZImageBackend(str(tiny_model), attention="_native_flash")
    yield backend
    backend.close()  # diffusers' active attention backend is process-wide: close() puts SDPA back


def test_flash_attention_refuses_a_mixed_batch_so_the_batcher_groups_by_caption_bucket(
    flash_backend: ZImageBackend, zimage_backend: ZImageBackend
) -> None:
    from workers.inference.batcher import Batcher

    batch = [req(seed=i, prompt=p) for i, p in enumerate(MIXED)]
    with pytest.raises(ValueError, match="attn_mask"):
        flash_backend.generate(batch)  # the hazard: a mask, which flash kernels refuse
    assert len({flash_backend.admit(r) for r in batch}) == 3  # "a cat" and "城市夜景" share a bucket
    assert zimage_backend.admit(batch[0]) is None  # SDPA takes masks: no grouping needed
    held = Held(flash_backend)
    batcher = Batcher(held, max_batch=8, max_wait_s=0.0)  # type: ignore[arg-type]
    try:
        hold = batcher.submit(req(width=128))  # holds the GPU until the others have queued
        tickets = [batcher.submit(r) for r in batch + [req(seed=9, prompt="a cow")]]
        held.release.set()
        images = [t.future.result(timeout=60) for t in [hold, *tickets]][1:]
    finally:
        batcher.close()
    assert batcher.stats["failed_calls"] == 0
    assert tickets[0].batch_id == tickets[-1].batch_id  # "a cat" and "a cow": one bucket, one batch
    for image, r in zip(images, batch, strict=False):
        assert np.abs(pixels(image) - pixels(flash_backend.generate([r])[0])).max() <= 1


def test_compile_is_regional_dynamic_and_warms_up_every_size_and_batch(tiny_model: Path, monkeypatch) -> None:
    """``--compile``: the wiring with torch.compile's ``eager`` backend (dynamo traces for real, no C++ build).

    The inductor path (``--compile`` alone) needs a GPU-sized wait on CPU and is left to the GPU benchmark.
    """
    import torch._dynamo

    calls: list[tuple[int, int, int]] = []
    real_generate = ZImageBackend.generate

    def generate(self, batch, progress=None):
        calls.append((batch[0].width, batch[0].height, len(batch)))
        return real_generate(self, batch, progress)

    monkeypatch.setattr(ZImageBackend, "generate", generate)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    backend = ZImageBackend(str(tiny_model), compile="eager", warmup_sizes="64x64,128x64", max_batch=3)
    try:
        assert torch._dynamo.config.recompile_limit >= 64
        assert calls == [(64, 64, 1), (64, 64, 3), (128, 64, 1), (128, 64, 3)]
        blocks = [m for m in backend._pipe.transformer.modules() if type(m).__name__ == "ZImageTransformerBlock"]
        assert blocks and all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)
        plain = ZImageBackend(str(tiny_model), warmup=False)
        batch = [req(seed=i, prompt=p) for i, p in enumerate(MIXED[:3])]
        for a, b in zip(backend.generate(batch), plain.generate(batch), strict=True):
            assert np.abs(pixels(a) - pixels(b)).max() <= 1
    finally:
        backend.close()
