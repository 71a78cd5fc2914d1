"""``python -m benchmarks``: the queue's own cost next to the GPU's, measured side by side.

Each scenario starts its own private Redis (AOF on, as ``zimg up`` would) and its own
inference server, workers and web service as real processes, then stops them. Every
figure is printed next to a baseline measured in the same run, because absolute times
on a shared machine drift. ``--quick`` runs a small subset in seconds (the CI smoke
test); it is for checking that the benchmark runs, not for its numbers.

    python -m benchmarks                      # full run, a few minutes
    python -m benchmarks --quick --json out.json
    python -m benchmarks --only overhead,status_depth
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import cpu_per_job, enqueue_rate, gpu_busy, memory, overhead, redis_packing, status_depth, validation

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"

#: name -> (full run, quick run)
SCENARIOS: dict[str, tuple[Callable[[], dict], Callable[[], dict]]] = {
    "overhead": (
        lambda: overhead.run(500, cache_hits=100),
        lambda: overhead.run(20, cache_hits=5, warmup=3),
    ),
    "cpu_per_job": (  # CPU time per job of each process (web, worker, inference, Redis, client) per path
        lambda: cpu_per_job.run(400),
        lambda: cpu_per_job.run(6, block=3, warmup=2),
    ),
    "gpu_busy": (
        lambda: gpu_busy.run(64),  # every simulator profile, max-batch and 2x max-batch workers
        lambda: gpu_busy.run(16, profiles=("h200-512",), workers=(8,), batch1_s=0.02),
    ),
    "enqueue_rate": (
        lambda: enqueue_rate.run(),
        lambda: enqueue_rate.run(single=100, batched=1000, chunk=500, http_total=80),
    ),
    "status_depth": (
        lambda: status_depth.run(100, 100_000, reads=2000),
        lambda: status_depth.run(10, 1000, reads=50, probe=5),
    ),
    "memory": (
        lambda: memory.run(50),
        lambda: memory.run(3, size=256),
    ),
    "redis_packing": (  # hiredis packing each command whole vs redis-py's per-argument encoding (zimg_queue.packing)
        lambda: redis_packing.run(),
        lambda: redis_packing.run(n=50, rounds=1),
    ),
    "validation": (  # pydantic models vs the hand-written validator they replaced (benchmarks/old_validator.py)
        lambda: validation.run(),
        lambda: validation.run(n=1000, single=100, batched=1000, chunk=500, rounds=1),
    ),
}


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    header = ["scenario", "figure", "value", "unit", "baseline (same run)", "baseline value", "ratio", "target", "met"]
    lines = [header]
    for name, res in results.items():
        if "error" in res:
            lines.append([name, "ERROR", res["error"].splitlines()[-1][:80], "", "", "", "", "", ""])
            continue
        for r in res["rows"]:
            met = {True: "yes", False: "NO", None: ""}[r.get("met")]
            lines.append(
                [
                    name,
                    r["metric"],
                    fmt(r["value"]),
                    r["unit"],
                    r.get("baseline") or "",
                    fmt(r.get("baseline_value")),
                    "" if r.get("ratio") is None else f"{r['ratio']:g}x",
                    r.get("target") or "",
                    met,
                ]
            )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small subset in seconds (CI smoke test)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"write results here (default {DEFAULT_JSON})")
    parser.add_argument("--only", help=f"comma-separated scenarios (default all: {','.join(SCENARIOS)})")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")

    started = time.perf_counter()
    results: dict[str, Any] = {}
    for name in names:
        print(f"[{name}] running...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            results[name] = SCENARIOS[name][1 if args.quick else 0]()
        except Exception:
            results[name] = {"error": traceback.format_exc()}
            print(results[name]["error"], file=sys.stderr)
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"[{name}] {results[name]['seconds']} s", file=sys.stderr, flush=True)
    wall = round(time.perf_counter() - started, 1)

    print(table(results))
    print(f"\n{'quick' if args.quick else 'full'} run, {wall} s wall, {machine()['cpus']} CPUs")
    report = {
        "command": "python -m benchmarks" + (" --quick" if args.quick else ""),
        "quick": args.quick,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "wall_s": wall,
        "machine": machine(),
        "scenarios": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.json}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
