"""Inference backends. ``load(name, **options)`` builds one by name."""

from __future__ import annotations

from typing import Any

from .base import Backend


def load(name: str, max_batch: int = 8, **options: Any) -> Backend:
    """``sim`` (a declared simulator, no GPU) or ``zimage`` (diffusers' ZImagePipeline)."""
    if name == "sim":
        from .sim import SimBackend

        return SimBackend.from_env(**options)
    if name == "zimage":
        from .zimage import ZImageBackend

        return ZImageBackend(max_batch=max_batch, **options)
    raise ValueError(f"unknown backend {name!r}: choose sim or zimage")
