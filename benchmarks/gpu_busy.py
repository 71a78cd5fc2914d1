"""Scenario 2: does the queue keep the GPU busy?

The ``sim`` backend with a latency model calibrated to a real GPU at 1024x1024,
``t(B) = 0.9 s + 0.25 s * B`` per batch of B images, scaled down uniformly
(``ZIMG_SIM_SCALE``) so the run takes seconds. ``workers`` RQ workers drain ``jobs``
queued jobs. Images per second are compared with the ideal (the server never idle,
always at a full batch: ``max_batch / t(max_batch)``) and with the same run with
batching off (``--max-batch 1``). The images drawn are small (``size``), so the
2-core machine's CPU stays out of the figure; the latency model is what a GPU would do.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import requests

from .common import Bench, row

LATENCY_A, LATENCY_B = 0.9, 0.25


def t_batch(batch: int, scale: float) -> float:
    return (LATENCY_A + LATENCY_B * batch) * scale


def one_run(jobs: int, workers: int, max_batch: int, scale: float, size: int, max_wait_ms: float) -> dict[str, Any]:
    with Bench(f"gpu-b{max_batch}") as bench:
        sim = {"latency_a": LATENCY_A, "latency_b": LATENCY_B, "scale": scale}
        bench.inference(max_batch=max_batch, max_wait_ms=max_wait_ms, **sim)
        bench.worker(workers)
        producer = bench.producer()
        seed = secrets.randbelow(2**31)
        reqs = [
            {"prompt": "benchmark: a harbour", "width": size, "height": size, "seed": seed + i} for i in range(jobs)
        ]
        before = requests.get(f"{bench.settings.inference_url}/healthz", timeout=5).json()["batcher"]
        t0 = time.perf_counter()
        ids = producer.enqueue_many(reqs)
        for job_id in ids:
            status = producer.wait(job_id, timeout=300)
            if status["status"] != "finished":
                raise RuntimeError(f"benchmark job ended {status['status']}: {status.get('error')}")
        elapsed = time.perf_counter() - t0
        after = requests.get(f"{bench.settings.inference_url}/healthz", timeout=5).json()["batcher"]
    batches = after["batches"] - before["batches"]
    busy = after["busy_s"] - before["busy_s"]
    return {
        "jobs": jobs,
        "workers": workers,
        "max_batch": max_batch,
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(jobs / elapsed, 3),
        "batches": batches,
        "mean_batch": round(jobs / batches, 2) if batches else None,
        "server_busy_fraction": round(busy / elapsed, 3),
    }


def run(
    jobs: int = 200,
    *,
    workers: tuple[int, ...] = (8, 16),
    max_batch: int = 8,
    scale: float = 0.1,
    size: int = 128,
    max_wait_ms: float = 10.0,
) -> dict[str, Any]:
    """One batched run per worker count, and the batching-off run with the first count."""
    ideal = max_batch / t_batch(max_batch, scale)
    ideal_unbatched = 1 / t_batch(1, scale)
    model = f"t(B)=(0.9+0.25B)x{scale:g}"
    unbatched = one_run(jobs, workers[0], 1, scale, size, max_wait_ms)
    rows, runs = [], []
    for count in workers:
        batched = one_run(jobs, count, max_batch, scale, size, max_wait_ms)
        runs.append(batched)
        of_ideal = batched["images_per_s"] / ideal
        speedup = batched["images_per_s"] / unbatched["images_per_s"]
        batched.update(fraction_of_ideal=round(of_ideal, 3), speedup_vs_unbatched=round(speedup, 2))
        rows.append(
            row(
                f"GPU kept busy: img/s, {count} workers, batch {max_batch} (mean {batched['mean_batch']})",
                batched["images_per_s"],
                "img/s",
                f"ideal {max_batch}/t({max_batch}), {model}",
                round(ideal, 3),
                target=">= 0.90 of ideal",
                met=of_ideal >= 0.9,
            )
        )
        rows.append(
            row(
                f"GPU kept busy: {count} workers batched vs batching off",
                batched["images_per_s"],
                "img/s",
                f"{workers[0]} workers, --max-batch 1 (ideal 1/t(1) = {ideal_unbatched:.2f} img/s)",
                unbatched["images_per_s"],
                target=">= 2x",
                met=speedup >= 2.0,
            )
        )
    return {
        "rows": rows,
        "details": {
            "latency_model": {"a": LATENCY_A, "b": LATENCY_B, "scale": scale, "size": f"{size}x{size}"},
            "ideal_images_per_s": round(ideal, 3),
            "ideal_unbatched_images_per_s": round(ideal_unbatched, 3),
            "batched": runs,
            "unbatched": unbatched,
        },
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 200), indent=2))
