"""Scenario 2: does the queue keep the (simulated) GPU busy, and what does batching buy on it?

The ``sim`` backend runs with a **simulator profile** (``ZIMG_SIM_PROFILE``, see
``workers/inference/backends/sim_profiles.py``): a latency curve ``t(B) = a + b*B`` and an out-of-memory
batch limit derived from FLOP counts and published GPU figures, i.e. *estimates*, not measurements. The
curve is scaled down uniformly (``ZIMG_SIM_SCALE``) so a batch of one takes ``batch1_s`` seconds of wall time
(well above the queue's own ~10-40 ms per job on the 2-core box, as a real 0.3-2.3 s image is), and images/s
are reported back on the simulated GPU's clock (measured img/s x scale).

For each profile, in one run: ``--max-batch 1`` (batching off) with ``max_batch`` workers, then batching on
with ``max_batch`` and ``2 x max_batch`` RQ workers, each draining ``jobs`` queued jobs through the real
queue, workers and inference server. Reported: images/s, the mean batch, the share of the wall time the
server's backend was generating (GPU busy), and the ratio to batching off and to the ideal (always a full
batch, never idle: ``max_batch / t(max_batch)``, or ``1 / t(1)`` where a batch of two does not fit).

``python -m benchmarks.gpu_busy`` runs every profile; ``--policy`` measures the batching window instead
(``--max-wait-ms`` 0, 10, 50 at 1x and 2x workers), the measurement behind the server's default. It runs the
profiles at their real speed (scale 1): a window's cost is relative to the GPU's time, its gain to the
clients' return latency, which is real time, so scaling the GPU down would overstate the cost.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from collections.abc import Sequence
from typing import Any

import requests

from workers.inference.backends.sim_profiles import NAMED, Profile, profile

from .common import Bench, row

DEFAULT_MAX_WAIT_MS = 0.0  # the server's default


def one_run(
    jobs: int, workers: int, max_batch: int, prof: Profile, scale: float, size: int, max_wait_ms: float
) -> dict[str, Any]:
    """``jobs`` jobs through ``workers`` RQ workers and an inference server simulating ``prof``."""
    with Bench(f"gpu-{prof.name}-b{max_batch}") as bench:
        bench.inference(max_batch=max_batch, max_wait_ms=max_wait_ms, profile=prof.name, scale=scale)
        bench.worker(workers)
        producer = bench.producer()
        seed = secrets.randbelow(2**31)
        reqs = [
            {"prompt": "benchmark: a harbour", "width": size, "height": size, "seed": seed + i} for i in range(jobs)
        ]
        url = f"{bench.settings.inference_url}/healthz"
        before = requests.get(url, timeout=5).json()["batcher"]
        t0 = time.perf_counter()
        ids = producer.enqueue_many(reqs)
        for job_id in ids:
            status = producer.wait(job_id, timeout=600)
            if status["status"] != "finished":
                raise RuntimeError(f"benchmark job ended {status['status']}: {status.get('error')}")
        elapsed = time.perf_counter() - t0
        after = requests.get(url, timeout=5).json()["batcher"]
    batches = after["batches"] - before["batches"]
    busy = after["busy_s"] - before["busy_s"]
    return {
        "profile": prof.name,
        "jobs": jobs,
        "workers": workers,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(jobs * scale / elapsed, 3),  # on the simulated GPU's clock (wall runs 1/scale faster)
        "batches": batches,
        "mean_batch": round(jobs / batches, 2) if batches else None,
        "failed_calls": after["failed_calls"] - before["failed_calls"],
        "gpu_busy": round(busy / elapsed, 3),
    }


def ideal(prof: Profile, max_batch: int) -> float:
    """Images/s of a GPU never idle, always at the largest batch that fits."""
    batch = max(1, min(max_batch, prof.max_batch))
    return batch / prof.latency(batch)


def run(
    jobs: int = 96,
    *,
    profiles: Sequence[str] = NAMED,
    workers: Sequence[int] | None = None,
    max_batch: int = 8,
    scale: float | None = None,
    batch1_s: float = 0.4,
    size: int = 128,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
) -> dict[str, Any]:
    """Per profile: batching off, then on with each worker count (default ``max_batch`` and twice that).

    ``scale`` fixes the simulator's time scale for every profile; by default each profile gets the scale at
    which a batch of one takes ``batch1_s`` seconds of wall time.
    """
    counts = tuple(workers or (max_batch, 2 * max_batch))
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    for name in profiles:
        prof = profile(name)
        s = scale if scale is not None else batch1_s / prof.latency(1)
        off = one_run(jobs, counts[0], 1, prof, s, size, max_wait_ms)
        best = ideal(prof, max_batch)
        runs = []
        for count in counts:
            on = one_run(jobs, count, max_batch, prof, s, size, max_wait_ms)
            on.update(
                speedup_vs_unbatched=round(on["images_per_s"] / off["images_per_s"], 2),
                fraction_of_ideal=round(on["images_per_s"] / best, 3),
            )
            runs.append(on)
            label = f"simulated {name}: {count} workers, batch {max_batch} (mean {on['mean_batch']})"
            rows.append(
                row(
                    f"{label}, GPU busy {on['gpu_busy']:.0%}",
                    on["images_per_s"],
                    "img/s (sim)",
                    f"--max-batch 1, {counts[0]} workers (GPU busy {off['gpu_busy']:.0%}); ideal {best:.2f}",
                    off["images_per_s"],
                )
            )
        details[name] = {
            "profile": vars(prof) | {"estimate": True},
            "scale": s,
            "ideal_images_per_s": round(best, 3),
            "unbatched": off,
            "batched": runs,
        }
    return {"rows": rows, "details": details}


def policy(
    jobs: int = 96,
    *,
    profiles: Sequence[str] = ("h200-512", "h200-1024"),
    windows: Sequence[float] = (0.0, 10.0, 50.0),
    max_batch: int = 8,
    scale: float = 1.0,
    size: int = 128,
) -> list[dict[str, Any]]:
    """The batching window measured: every profile x window x (1x, 2x ``max_batch`` workers), at real speed."""
    out = []
    for name in profiles:
        prof = profile(name)
        s = scale
        for window in windows:
            for count in (max_batch, 2 * max_batch):
                result = one_run(jobs, count, max_batch, prof, s, size, window)
                result["fraction_of_ideal"] = round(result["images_per_s"] / ideal(prof, max_batch), 3)
                print(json.dumps(result), flush=True)
                out.append(result)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=96)
    parser.add_argument("--profiles", default=",".join(NAMED))
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=DEFAULT_MAX_WAIT_MS)
    parser.add_argument("--batch1-s", type=float, default=0.4, help="wall seconds of a batch of one (profiles run)")
    parser.add_argument("--scale", type=float, default=1.0, help="--policy: the simulator's time scale")
    parser.add_argument("--policy", action="store_true", help="measure the batching window instead")
    args = parser.parse_args(argv)
    profiles = [p for p in args.profiles.split(",") if p]
    if args.policy:
        result: Any = policy(args.jobs, profiles=profiles, max_batch=args.max_batch, scale=args.scale)
    else:
        result = run(args.jobs, profiles=profiles, max_batch=args.max_batch, batch1_s=args.batch1_s,
                     max_wait_ms=args.max_wait_ms)  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
