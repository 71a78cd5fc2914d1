"""Simulator profiles: what Z-Image-Turbo would cost on a given GPU, from FLOP counts. ESTIMATES.

``ZIMG_SIM_PROFILE=h200-1024`` (or ``h200-512``, ``rtx4090-1024``) gives the ``sim`` backend a latency
curve ``t(B) = a + b*B`` for a batch of B images and an out-of-memory batch limit, derived below from the
model's size and published GPU figures. No GPU measurement has replaced them yet: every figure obtained
with a profile is a *simulated* figure and says so.

Work per image (6.155B-parameter DiT, 8 steps, ``n`` = image tokens + a 128-token caption)::

    linear layers   2 * 6.155e9 * n * 8          (2 FLOP per parameter per token per step)
    attention       4 * 30 * n^2 * 3840 * 8      (QK^T and AV, 30 layers of width 3840)
    text encoder    2 * 4.022e9 * 512            (Qwen3-4B over max_sequence_length tokens)
    VAE decode      5e12 * pixels / 1024^2       (a few per cent; an estimate)

    1024^2: n = 4096 + 128 = 4224 -> 0.416 + 0.066 + 0.004 + 0.005 = 0.49 PFLOP
     512^2: n = 1024 + 128 = 1152 -> 0.113 + 0.005 + 0.004 + 0.001 = 0.12 PFLOP

Time. An H200 reaches about 790 TFLOP/s in bf16 on large GEMMs (80 % of its 989 TFLOP/s dense peak), so
``b = work / 790e12``: 0.62 s per 1024^2 image, 0.16 s per 512^2 image. A batch's GEMMs have ``B*n`` rows;
with throughput ``R * m / (m + m_half)`` at ``m`` rows (``m_half`` = 512 rows, an estimate of where a
Hopper GEMM of this width reaches half speed) the time is ``b*B + b*m_half/n``, linear in B. Add a fixed
``a0`` = 0.04 s per call (8 steps x 30 layers x ~20 kernel launches of ~4 us, plus the scheduler and the
decode set-up)::

    h200-1024: a = 0.04 + 0.62 * 512/4224 = 0.115 s, b = 0.62 s  -> t(1) = 0.74 s, t(8) = 5.1 s
    h200-512:  a = 0.04 + 0.16 * 512/1152 = 0.110 s, b = 0.16 s  -> t(1) = 0.27 s, t(8) = 1.4 s

So at 1024^2 the GPU is nearly saturated at batch 1 (batching gains ~15 %), at 512^2 batching matters
(~55 %). The RTX 4090 is calibrated on its published figure, 2.3 s per 1024^2 image at batch 1 (that is
~210 TFLOP/s of the count above, more than the card's 165 TFLOP/s bf16 dense peak: the count is likely
an over-estimate, so the H200 figures are on the slow side): ``a = 0.1 s, b = 2.2 s``.

Memory. bf16 weights take 19.1 GiB (DiT 6.155B + text encoder 4.022B + VAE 0.084B parameters, 2 bytes
each); the CUDA context and workspaces ~1 GiB. An RTX 4090 (24 GiB) holds one 1024^2 image beside them
but not two, so one 1024^2 image needs more than (24 - 1 - 19.1) / 2 = 1.95 GiB of activations: take
2.2 GiB, scaled with the pixel count (the VAE decodes one image at a time with slicing on). An H200 (139
GiB usable) then holds (139 - 1 - 19.1) / 2.2 = 54 images at 1024^2, 216 at 512^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DIT_PARAMS = 6.155e9
TEXT_ENCODER_PARAMS = 4.022e9
WEIGHTS_GIB = 19.1
STEPS = 8
CAPTION_TOKENS = 128
MAX_SEQUENCE_LENGTH = 512
LAYERS, WIDTH = 30, 3840
VAE_FLOP_PER_MPX = 5e12
M_HALF = 512
LAUNCH_S = 0.04
CONTEXT_GIB = 1.0
ACTIVATION_GIB_1024 = 2.2


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    tflops: float | None = None  #: achievable bf16 TFLOP/s on large GEMMs
    seconds_per_1024: float | None = None  #: a published batch-1 time per 1024^2 image, when there is one


GPUS = {
    "h200": Gpu("NVIDIA H200", memory_gib=139.0, tflops=790.0),
    "rtx4090": Gpu("NVIDIA RTX 4090", memory_gib=24.0, seconds_per_1024=2.3),
}


def flop_per_image(width: int, height: int) -> float:
    """FLOP to make one image of ``width x height`` (see the module docstring)."""
    n = width * height // 256 + CAPTION_TOKENS  # 8x VAE and 2x2 patches: one token per 16x16 pixels
    linear = 2 * DIT_PARAMS * n * STEPS
    attention = 4 * LAYERS * n * n * WIDTH * STEPS
    text = 2 * TEXT_ENCODER_PARAMS * MAX_SEQUENCE_LENGTH
    vae = VAE_FLOP_PER_MPX * width * height / 2**20
    return linear + attention + text + vae


@dataclass(frozen=True)
class Profile:
    """A simulated GPU at one image size: ``t(B) = a + b*B`` seconds, and the largest batch that fits."""

    name: str
    gpu: str
    width: int
    height: int
    a: float
    b: float
    max_batch: int

    def latency(self, batch_size: int) -> float:
        return self.a + self.b * batch_size


def derive(gpu_key: str, width: int, height: int) -> Profile:
    """The profile of ``gpu_key`` at ``width x height``, by the arithmetic of the module docstring."""
    gpu = GPUS[gpu_key]
    if gpu.tflops is not None:
        b = flop_per_image(width, height) / (gpu.tflops * 1e12)
        a = LAUNCH_S + b * M_HALF / (width * height // 256 + CAPTION_TOKENS)
    else:
        assert gpu.seconds_per_1024 is not None
        b = (gpu.seconds_per_1024 - 0.1) * flop_per_image(width, height) / flop_per_image(1024, 1024)
        a = 0.1
    per_image = ACTIVATION_GIB_1024 * width * height / 2**20
    fits = max(0, math.floor((gpu.memory_gib - CONTEXT_GIB - WEIGHTS_GIB) / per_image))
    return Profile(f"{gpu_key}-{width}", gpu.name, width, height, round(a, 4), round(b, 4), fits)


def profile(name: str) -> Profile:
    """``h200-1024`` -> the H200 at 1024x1024; ``rtx4090-512x768`` works too."""
    gpu_key, _, size = name.lower().partition("-")
    if gpu_key not in GPUS or not size:
        raise ValueError(f"unknown simulator profile {name!r}: use <gpu>-<size>, gpu one of {sorted(GPUS)}")
    width, _, height = size.partition("x")
    try:
        w, h = int(width), int(height or width)
    except ValueError:
        raise ValueError(f"unknown simulator profile {name!r}: the size must be like 1024 or 1024x768") from None
    return derive(gpu_key, w, h)


#: The profiles the benchmarks run.
NAMED = ("h200-1024", "h200-512", "rtx4090-1024")
