"""The ``zimage`` backend on CPU, with the tiny random-weight Z-Image pipeline (no hub, no GPU)."""

from __future__ import annotations

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
    }
