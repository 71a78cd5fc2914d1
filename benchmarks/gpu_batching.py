"""How much does batching buy on this GPU? Images per second of the ``zimage`` backend by batch size.

Calls the backend directly (no HTTP, no batcher), so the numbers are the ceiling the server's
dynamic batching can reach: for each size and batch size, ``repeats`` timed pipeline calls after
one untimed call, reported as images/s, the ratio to the smallest batch size at that size, and peak
GPU memory. ``--tiny`` builds the tiny random-weight model and runs in seconds on CPU, so the
script is exercised in CI and cannot rot.

    python -m benchmarks.gpu_batching --model Tongyi-MAI/Z-Image-Turbo --sizes 1024x1024,768x768 \\
        --batch-sizes 1,2,4,8 --steps 8 --json results.json
    python -m benchmarks.gpu_batching --tiny
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers.inference.backends.base import Backend, InferenceRequest, OutOfMemory

TINY_SIZES = "64x64,128x128"
REAL_SIZES = "1024x1024,768x768"


def parse_size(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> ``(1024, 768)`` as (width, height)."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def _cuda(backend: Backend) -> Any | None:
    """torch when *backend* runs on CUDA (so peak memory is measurable), else None without importing it."""
    if not str(backend.health().get("device", "")).startswith("cuda"):
        return None
    import torch

    return torch if torch.cuda.is_available() else None


def measure_backend(
    backend: Backend, size: tuple[int, int], batch_size: int, steps: int, repeats: int = 3
) -> dict[str, Any]:
    """Time ``repeats`` calls of one batch of *batch_size* distinct seeds at *size* = (width, height).

    The first call is not timed: it pays for allocator growth and kernel selection at a new shape.
    An out-of-memory is reported in the row (``"error"``), not raised, so a sweep goes on.
    """
    width, height = size
    batch = [
        InferenceRequest(prompt=f"benchmark image {i}", width=width, height=height, num_inference_steps=steps, seed=i)
        for i in range(batch_size)
    ]
    row: dict[str, Any] = {"width": width, "height": height, "batch_size": batch_size, "steps": steps}
    torch = _cuda(backend)
    if torch is not None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    try:
        backend.generate(batch)
        for _ in range(repeats):
            start = time.perf_counter()
            backend.generate(batch)
            times.append(time.perf_counter() - start)
    except OutOfMemory as exc:
        row["error"] = str(exc)
    if times:
        per_batch = statistics.median(times)
        row.update(
            repeats=len(times),
            seconds_per_batch=per_batch,
            seconds_per_image=per_batch / batch_size,
            images_per_s=batch_size / per_batch,
        )
    row["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if torch is not None else None
    return row


def sweep(
    backend: Backend,
    sizes: Sequence[tuple[int, int]],
    batch_sizes: Sequence[int],
    steps: int,
    repeats: int = 3,
) -> list[dict[str, Any]]:
    """All sizes x batch sizes; ``ratio`` = images/s over the smallest batch size's at the same size."""
    rows: list[dict[str, Any]] = []
    for size in sizes:
        base: float | None = None
        for batch_size in sorted(batch_sizes):
            row = measure_backend(backend, size, batch_size, steps, repeats)
            if "images_per_s" in row:
                base = base or row["images_per_s"]
                row["ratio"] = row["images_per_s"] / base
            rows.append(row)
            print(format_row(row), file=sys.stderr, flush=True)
            if "error" in row:
                break  # larger batches will not fit either
    return rows


HEADER = f"{'size':>10} {'batch':>5} {'img/s':>9} {'s/img':>9} {'ratio':>6} {'peak GPU mem':>13}"


def format_row(row: dict[str, Any]) -> str:
    size = f"{row['width']}x{row['height']}"
    mem = "n/a" if row.get("peak_gpu_mem_gib") is None else f"{row['peak_gpu_mem_gib']:.2f} GiB"
    if "images_per_s" not in row:
        return f"{size:>10} {row['batch_size']:>5} {'OOM':>9} {'':>9} {'':>6} {mem:>13}"
    return (
        f"{size:>10} {row['batch_size']:>5} {row['images_per_s']:>9.3f} {row['seconds_per_image']:>9.4f}"
        f" {row['ratio']:>6.2f} {mem:>13}"
    )


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    return "\n".join([HEADER, *(format_row(r) for r in rows)])


def environment(backend: Backend) -> dict[str, Any]:
    """What the numbers were measured on, for the JSON file."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        **backend.health(),
    }
    try:
        import diffusers
        import torch

        info.update(torch=torch.__version__, diffusers=diffusers.__version__)
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="local folder or hub id of a Z-Image pipeline")
    source.add_argument("--tiny", action="store_true", help="build the tiny random-weight model (CPU, seconds)")
    parser.add_argument("--sizes", help=f"WxH list (default {REAL_SIZES}; {TINY_SIZES} with --tiny)")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per cell (median is reported)")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--json", type=Path, help="write the rows and the environment here")
    args = parser.parse_args(argv)

    from workers.inference.backends.zimage import ZImageBackend

    sizes = [parse_size(s) for s in (args.sizes or (TINY_SIZES if args.tiny else REAL_SIZES)).split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.tiny:
            from workers.inference.tiny_model import make_tiny_model

            model = str(make_tiny_model(Path(tmp) / "tiny-zimage"))
        start = time.perf_counter()
        backend = ZImageBackend(model, device=args.device, dtype=args.dtype)
        load_s = time.perf_counter() - start
        print(f"loaded {model} in {load_s:.1f} s: {backend.health()}", file=sys.stderr)
        try:
            rows = sweep(backend, sizes, batch_sizes, args.steps, args.repeats)
            env = environment(backend)
        finally:
            backend.close()
    print(format_table(rows))
    if args.json:
        report = {"mode": "backend", "load_s": load_s, "environment": env, "results": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
