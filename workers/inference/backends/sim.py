"""``sim``: a declared GPU *simulator*, not the model.

It draws a deterministic picture for (prompt, seed, size) with Pillow, so the
same request always gives the same bytes, and it behaves like a GPU from
settings: a per-batch latency ``t(B) = a + b*B`` (scaled by ``scale``), an
out-of-memory error above a pixel budget, and injectable faults the HTTP server
applies (slow answers, dropped connections, 500s, empty images). Every response
it makes says ``sim``. Settings come from ``ZIMG_SIM_*`` variables.

``ZIMG_SIM_PROFILE`` (e.g. ``h200-1024``) replaces ``a``, ``b`` and the memory limit with
a curve derived from FLOP counts and published GPU figures (:mod:`.sim_profiles`,
estimates): the latency is the profile's at its size whatever size is drawn, and a
batch larger than the profile's limit runs out of memory.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from PIL import Image, ImageDraw

from zimg_queue.settings import Settings

from .base import InferenceRequest, OutOfMemory, ProgressFn
from .sim_profiles import Profile, profile


@dataclass
class SimConfig:
    """The simulated GPU. Rates are probabilities per request, drawn from a seeded RNG."""

    latency_a: float = 0.05  #: seconds per batch
    latency_b: float = 0.02  #: seconds per image in the batch
    scale: float = 1.0  #: multiplies the whole latency model
    oom_pixels: int = 0  #: a batch above this many pixels (sum) runs out of memory; 0 = never
    fail_rate: float = 0.0  #: answer 500 with a generic error
    drop_rate: float = 0.0  #: cut the connection mid-response
    empty_rate: float = 0.0  #: answer {"image": ""}
    slow_rate: float = 0.0  #: add ``slow_s`` before answering
    slow_s: float = 0.0
    fault_seed: int = 0
    profile: str | None = None  #: a :mod:`.sim_profiles` name: replaces the latency model and memory limit

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> SimConfig:
        """The ``ZIMG_SIM_*`` fields of :class:`Settings` (``env`` replaces the environment); overrides win."""
        s = Settings() if env is None else Settings.from_env(env)
        values: dict[str, Any] = {f.name: getattr(s, f"sim_{f.name}") for f in fields(cls)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        self.physics: Profile | None = profile(self.profile) if self.profile else None

    def latency(self, batch_size: int) -> float:
        if self.physics is not None:
            return self.physics.latency(batch_size) * self.scale
        return max(0.0, (self.latency_a + self.latency_b * batch_size) * self.scale)

    def runs_out_of_memory(self, batch: Sequence[InferenceRequest]) -> str | None:
        """Why ``batch`` would not fit, or None."""
        if self.physics is not None and len(batch) > self.physics.max_batch:
            return f"batch of {len(batch)} above {self.physics.max_batch} on {self.physics.name}"
        if self.oom_pixels and sum(r.width * r.height for r in batch) > self.oom_pixels:
            return f"batch above {self.oom_pixels} pixels"
        return None


class SimBackend:
    """A simulator with the real backend's interface; see the module docstring."""

    name: ClassVar[str] = "sim"

    def __init__(self, config: SimConfig | None = None):
        self.config = config or SimConfig()
        self._rng = random.Random(self.config.fault_seed)
        self._rng_lock = threading.Lock()

    @classmethod
    def from_env(cls, **overrides: Any) -> SimBackend:
        return cls(SimConfig.from_env(**overrides))

    def generate(self, batch: Sequence[InferenceRequest], progress: ProgressFn | None = None) -> list[Image.Image]:
        cfg = self.config
        if (why := cfg.runs_out_of_memory(batch)) is not None:
            raise OutOfMemory(f"CUDA out of memory (simulated: {why})")
        steps = batch[0].num_inference_steps
        per_step = cfg.latency(len(batch)) / steps
        for step in range(1, steps + 1):
            if per_step:
                time.sleep(per_step)
            if progress:
                progress(step, steps)
        return [draw(r) for r in batch]

    def fault(self) -> str | None:
        """Which injected fault (if any) the server should apply to the next response."""
        cfg = self.config
        with self._rng_lock:
            roll = self._rng.random()
        for name, rate in (("fail", cfg.fail_rate), ("drop", cfg.drop_rate), ("empty", cfg.empty_rate)):
            if roll < rate:
                return name
            roll -= rate
        if cfg.slow_rate and self._rng.random() < cfg.slow_rate:
            return "slow"
        return None

    def health(self) -> dict[str, Any]:
        config = {k: v for k, v in vars(self.config).items() if k != "physics"}
        if self.config.physics is not None:
            config["physics"] = vars(self.config.physics) | {"estimate": True}
        return {"backend": self.name, "simulator": True, "loaded": True, "device": "none", "config": config}

    def close(self) -> None:
        pass


def draw(req: InferenceRequest) -> Image.Image:
    """A deterministic abstract picture for (prompt, seed, size): same request, same pixels."""
    digest = hashlib.sha256(f"{req.prompt}\0{req.seed}\0{req.width}x{req.height}".encode()).digest()
    rng = random.Random(digest)
    w, h = req.width, req.height
    image = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    pen = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randrange(8, max(9, w // 2)), y0 + rng.randrange(8, max(9, h // 2))
        color = tuple(rng.randrange(256) for _ in range(3))
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)((x0, y0, x1, y1), fill=color)
    pen.text((4, h - 14), "zimg sim", fill=(255, 255, 255))
    return image
