"""Scenario 8: where the CPU of one job goes, process by process (issue 14 point 8).

The overhead scenario measures wall time; on a 2-vCPU box much of that is processes waiting
for a core, so this one counts CPU time instead: user + system time of every thread of each
process (``/proc/<pid>/task/*/stat``), before and after a block of jobs, divided by the jobs.
Three kinds of call, in alternating blocks so drift hits all alike: a direct ``POST
/v1/generate`` (the baseline), ``Producer.enqueue`` + ``Producer.wait``, and the HTTP surface
(``POST /v1/jobs`` then ``GET /v1/jobs/<id>?wait=30``). The client row is this process.

    python -m benchmarks.cpu_per_job 400
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zimg_queue.processes import descendants_of

from .common import Bench, row, session

KINDS = ("direct", "producer", "http")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of every thread of ``pids`` so far, in seconds."""
    ticks = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                fields = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def run(n: int = 400, *, block: int = 50, size: int = 256, warmup: int = 20) -> dict[str, Any]:
    with Bench("cpu_per_job") as bench:
        inference = bench.inference(latency_a=0, latency_b=0)
        worker = bench.worker(1)
        web = bench.web(env={"ZIMG_RATE_LIMIT": "0"})
        assert web is not None and web.url
        producer = bench.producer()
        http = session()
        body = {"prompt": "benchmark: a lighthouse at dusk", "width": size, "height": size}
        seeds = iter(range(secrets.randbelow(2**30), 2**31))

        def direct() -> None:
            resp = http.post(f"{bench.settings.inference_url}/v1/generate", json={**body, "seed": next(seeds)})
            resp.raise_for_status()
            resp.json()

        def queued() -> None:
            status = producer.wait(producer.enqueue(body, seed=next(seeds)), timeout=60)
            if status["status"] != "finished":
                raise RuntimeError(f"benchmark job ended {status['status']}: {status.get('error')}")

        def over_http() -> None:
            created = http.post(f"{web.url}/v1/jobs", json={**body, "seed": next(seeds)})
            created.raise_for_status()
            status = http.get(f"{web.url}/v1/jobs/{created.json()['id']}", params={"wait": 30}).json()
            if status["status"] != "finished":
                raise RuntimeError(f"benchmark job ended {status['status']}: {status.get('error')}")

        calls: dict[str, Callable[[], None]] = {"direct": direct, "producer": queued, "http": over_http}
        for call in calls.values():
            for _ in range(warmup):
                call()
        assert bench.redis.process is not None
        redis_pid = bench.redis.process.pid
        groups = {
            "inference": lambda: [inference.pid, *descendants_of(inference.pid)],
            "worker": lambda: [worker.pid, *descendants_of(worker.pid)],  # RQ's scheduler too
            "web": lambda: [web.pid, *descendants_of(web.pid)],  # gunicorn's workers
            "redis": lambda: [redis_pid],
            "client": lambda: [os.getpid()],
        }
        cpu = {kind: dict.fromkeys(groups, 0.0) for kind in KINDS}
        wall = dict.fromkeys(KINDS, 0.0)
        done = dict.fromkeys(KINDS, 0)
        while min(done.values()) < n:
            for kind in KINDS:
                count = min(block, n - done[kind])
                if count <= 0:
                    continue
                pids = {name: find() for name, find in groups.items()}
                before = {name: cpu_seconds(p) for name, p in pids.items()}
                t0 = time.perf_counter()
                for _ in range(count):
                    calls[kind]()
                wall[kind] += time.perf_counter() - t0
                for name, p in pids.items():
                    cpu[kind][name] += cpu_seconds(p) - before[name]
                done[kind] += count

    per_job = {kind: {name: round(s / n * 1000, 3) for name, s in cpu[kind].items()} for kind in KINDS}
    totals = {kind: round(sum(per_job[kind].values()), 3) for kind in KINDS}
    walls = {kind: round(wall[kind] / n * 1000, 3) for kind in KINDS}
    base = f"direct POST /v1/generate {size}x{size}: {totals['direct']:.2f} ms CPU, {walls['direct']:.2f} ms wall"
    rows = [
        row(
            f"CPU per job, all processes, {label} ({n} jobs)",
            totals[kind],
            "ms",
            f"{base}; this path {walls[kind]:.2f} ms wall",
            totals["direct"],
        )
        for kind, label in (("producer", "Producer.enqueue + wait"), ("http", "POST /v1/jobs + GET ?wait="))
    ]
    return {"rows": rows, "details": {"jobs": n, "cpu_ms_per_job": per_job, "wall_ms_per_job": walls}}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 400), indent=2))
