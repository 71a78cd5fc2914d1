"""How much does batching buy on this GPU? Z-Image-Turbo images per second, by batch size and by server.

``python -m benchmarks.gpu_batching`` on a machine with a CUDA GPU runs the whole set in one command, with
``$ZIMG_MODEL`` or Tongyi-MAI/Z-Image-Turbo at 1024x1024 and 512x512:

1. **backend**: calls the backend directly (no HTTP, no batcher): for each size and batch size 1, 2, 4, 8,
   ``repeats`` timed pipeline calls after one untimed call; images/s, the ratio to batch 1, peak GPU memory.
   The ceiling the server's dynamic batching can reach.
2. **http** (:mod:`benchmarks.gpu_http`): real ``zimg inference-server`` processes, ``--max-batch 1``
   (batching off) then ``--max-batch 8``, each driven by 8 and by 16 concurrent clients (max batch and
   twice that): images/s, mean batch, GPU busy, latency, ratio to batching off.

``--mode backend`` or ``--mode http`` (``--http``) runs one half. ``--tiny`` builds the tiny random-weight
model and runs on CPU in seconds; ``--backend sim`` uses the declared simulator, with ``--profile h200-512``
(etc.) for a simulator profile (estimates from FLOP counts, see ``sim_profiles``) or ``--sim-a``/``--sim-b``
for a plain ``t(B) = a + b*B``. So the script is exercised without a GPU and cannot rot. Speed options
(``--attention``, ``--compile``, ``--dtype``, ``--device``) are passed to the backend and to the servers.

    python -m benchmarks.gpu_batching --json gpu.json                       # on the GPU box: everything
    python -m benchmarks.gpu_batching --mode http --compile --json compiled.json
    python -m benchmarks.gpu_batching --tiny
    python -m benchmarks.gpu_batching --backend sim --profile h200-512 --sim-scale 0.05 --http
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

from .gpu_http import HTTP_HEADER, format_http_row, http_sweep

TINY_SIZES = "64x64,128x128"
TINY_HTTP_SIZES = "64x64"
REAL_SIZES = "1024x1024,512x512"
DEFAULT_MODEL = "Tongyi-MAI/Z-Image-Turbo"


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


def environment(backend: Backend | None) -> dict[str, Any]:
    """What the numbers were measured on, for the JSON file (the backend's health, when it runs in-process)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        **(backend.health() if backend is not None else {}),
    }
    if "torch" not in sys.modules and info.get("backend") != "zimage":
        return info  # the sim backend: do not pay for importing torch
    try:
        import diffusers
        import torch

        info.update(torch=torch.__version__, diffusers=diffusers.__version__)
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return info


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _model(args: argparse.Namespace, parser: argparse.ArgumentParser, tmp: str) -> str | None:
    """The model to load: --tiny builds one; else --model, $ZIMG_MODEL, or the real one when there is a GPU."""
    if args.backend == "sim":
        return None
    if args.tiny:
        from workers.inference.tiny_model import make_tiny_model

        return str(make_tiny_model(Path(tmp) / "tiny-zimage"))
    if args.model:
        return str(args.model)
    from zimg_queue.settings import Settings

    configured = Settings().model
    if configured:
        return configured
    try:
        import torch

        if torch.cuda.is_available():
            return DEFAULT_MODEL
    except ImportError:
        pass
    parser.error("no GPU here: pass --model, --tiny (CPU, seconds) or --backend sim")
    return None


def _speed_args(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for flag in ("device", "dtype", "attention"):
        if getattr(args, flag):
            out += [f"--{flag}", getattr(args, flag)]
    if args.compile:
        out += ["--compile"] if args.compile is True else ["--compile", args.compile]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["all", "backend", "http"], help="default all (http with --http)")
    parser.add_argument("--http", action="store_true", help="same as --mode http")
    parser.add_argument("--backend", default="zimage", choices=["zimage", "sim"])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help=f"zimage: a folder or hub id (default $ZIMG_MODEL, else {DEFAULT_MODEL})")
    source.add_argument("--tiny", action="store_true", help="zimage: build the tiny random-weight model (CPU)")
    parser.add_argument("--sizes", help=f"WxH list (default {REAL_SIZES}; with --tiny {TINY_SIZES})")
    parser.add_argument(
        "--batch-sizes", help="backend mode: batch sizes (default 1,2,4,8); --http alone: --max-batches"
    )
    parser.add_argument("--max-batches", help="http: the servers' --max-batch values (default 1,8)")
    parser.add_argument("--clients", help="http: concurrent client counts (default max batch and twice that)")
    parser.add_argument("--requests", type=int, help="http: timed requests per row (default 4 x clients)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="backend mode: timed calls per cell (median)")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="http: the servers' --max-wait-ms")
    parser.add_argument("--profile", help="sim: a simulator profile (h200-1024, h200-512, rtx4090-1024)")
    parser.add_argument("--sim-scale", type=float, default=1.0, help="sim: multiplies the latency model")
    parser.add_argument("--sim-a", type=float, default=0.2, help="sim without a profile: seconds per batch")
    parser.add_argument("--sim-b", type=float, default=0.01, help="sim without a profile: seconds per image")
    parser.add_argument("--load-timeout", type=float, default=1800, help="http: seconds to wait for a server")
    parser.add_argument("--device", help="zimage: default cuda when available, else cpu")
    parser.add_argument("--dtype", help="zimage: default bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--attention", help="zimage: a diffusers attention backend (default native SDPA)")
    parser.add_argument("--compile", nargs="?", const=True, default=False, help="zimage: regional torch.compile")
    parser.add_argument("--json", type=Path, help="write the rows and the environment here")
    args = parser.parse_args(argv)
    mode = args.mode or ("http" if args.http else "all")
    if args.backend == "sim" and (args.model or args.tiny):
        parser.error("--model and --tiny are for the zimage backend")
    sizes = [parse_size(s) for s in (args.sizes or (TINY_SIZES if args.tiny else REAL_SIZES)).split(",")]
    batch_sizes = _ints(args.batch_sizes or "1,2,4,8")
    max_batches = _ints(args.max_batches or (args.batch_sizes if mode == "http" and args.batch_sizes else "1,8"))
    biggest = max(max_batches)
    clients = _ints(args.clients) if args.clients else [biggest, 2 * biggest]
    report: dict[str, Any] = {"mode": mode}
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(args, parser, tmp)
        if mode in ("all", "backend"):
            report.update(run_backend(args, model, sizes, batch_sizes))
        if mode in ("all", "http"):
            env = {"HF_HUB_OFFLINE": "1"} if args.tiny else {}  # a local folder: the hub is never needed
            if args.backend == "sim":
                env.update(ZIMG_SIM_LATENCY_A=str(args.sim_a), ZIMG_SIM_LATENCY_B=str(args.sim_b))
                env.update(ZIMG_SIM_SCALE=str(args.sim_scale), ZIMG_SIM_PROFILE=args.profile or "")
            rows, info = http_sweep(
                args.backend, model, sizes, max_batches, steps=args.steps, clients=clients, total=args.requests,
                max_wait_ms=args.max_wait_ms, env=env, log_dir=Path(tmp), load_timeout=args.load_timeout,
                extra_args=_speed_args(args) if args.backend == "zimage" else (),
            )  # fmt: skip
            print("\n".join([HTTP_HEADER, *(format_http_row(r) for r in rows)]))
            report.update(info, http_results=rows, environment=report.get("environment") or environment(None))
            if mode == "http":
                report["results"] = rows
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


def run_backend(
    args: argparse.Namespace, model: str | None, sizes: list[tuple[int, int]], batch_sizes: list[int]
) -> dict[str, Any]:
    """The backend sweep, in this process."""
    start = time.perf_counter()
    if args.backend == "sim":
        from workers.inference.backends.sim import SimBackend, SimConfig

        config = SimConfig(latency_a=args.sim_a, latency_b=args.sim_b, scale=args.sim_scale, profile=args.profile)
        backend: Backend = SimBackend(config)
    else:
        from workers.inference.backends.zimage import ZImageBackend

        assert model is not None
        backend = ZImageBackend(
            model, device=args.device, dtype=args.dtype, attention=args.attention, compile=args.compile,
            max_batch=max(batch_sizes), warmup_sizes=[f"{w}x{h}" for w, h in sizes] if args.compile else None,
        )  # fmt: skip
    load_s = time.perf_counter() - start
    print(f"loaded {args.backend} in {load_s:.1f} s: {backend.health()}", file=sys.stderr)
    try:
        rows = sweep(backend, sizes, batch_sizes, args.steps, args.repeats)
        env_info = environment(backend)
    finally:
        backend.close()
    print(format_table(rows))
    return {"load_s": load_s, "environment": env_info, "results": rows, "backend_results": rows}


if __name__ == "__main__":
    raise SystemExit(main())
