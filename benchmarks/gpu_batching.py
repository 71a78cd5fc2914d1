"""How much does batching buy on this GPU? Images per second of Z-Image-Turbo by batch size.

Two modes:

* **backend** (default): calls the backend directly (no HTTP, no batcher), so the numbers are the
  ceiling the server's dynamic batching can reach: for each size and batch size, ``repeats`` timed
  pipeline calls after one untimed call, reported as images/s, the ratio to the smallest batch size at
  that size, and peak GPU memory.
* **--http**: the real service path. Starts a real ``zimg inference-server`` process (free port) per
  ``--max-batch`` value in ``--batch-sizes`` (default ``1,8``: batching off, then on), drives it with
  ``--clients`` concurrent HTTP clients (threads, one ``requests.Session`` each) sending ``--requests``
  requests per size after one untimed warm-up round, and reports images/s, the mean batch the server
  formed, client latency, the ratio to the ``--max-batch 1`` server at the same size, and the
  server's peak GPU memory since it started (``/healthz`` ``peak_memory_bytes``, CUDA only).

``--tiny`` builds the tiny random-weight model and runs in seconds on CPU, and ``--backend sim`` uses
the declared simulator with the latency model ``t(B) = a + b*B`` (``--sim-a``, ``--sim-b``), so the
script is exercised without a GPU and cannot rot.

    python -m benchmarks.gpu_batching --model Tongyi-MAI/Z-Image-Turbo --sizes 1024x1024,768x768 \\
        --batch-sizes 1,2,4,8 --steps 8 --json results.json
    python -m benchmarks.gpu_batching --model Tongyi-MAI/Z-Image-Turbo --http --batch-sizes 1,2,4,8 --clients 8
    python -m benchmarks.gpu_batching --tiny
    python -m benchmarks.gpu_batching --tiny --http
    python -m benchmarks.gpu_batching --backend sim --http
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers.inference.backends.base import Backend, InferenceRequest, OutOfMemory
from zimg_queue.processes import stop_processes

TINY_SIZES = "64x64,128x128"
TINY_HTTP_SIZES = "64x64"
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


class Server:
    """A real ``zimg inference-server`` child process on a free port, logging to a file."""

    def __init__(
        self,
        backend: str,
        max_batch: int,
        *,
        model: str | None,
        max_wait_ms: float,
        env: dict[str, str],
        log_dir: Path,
        timeout: float,
    ) -> None:
        from zimg_queue.processes import wait_http
        from zimg_queue.redis_server import free_port

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.max_batch = max_batch
        args = [sys.executable, "-m", "zimg_queue.cli", "inference-server", "--backend", backend, "--port", str(port)]
        args += ["--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
        if model:
            args += ["--model", model]
        self.log = log_dir / f"inference-server-max-batch-{max_batch}.log"
        start = time.perf_counter()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_http(f"{self.url}/healthz", self.proc, timeout=timeout)
        except RuntimeError as exc:
            self.stop()
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"inference server did not start: {exc}\n--- its log ---\n{tail}") from None
        self.load_s = time.perf_counter() - start

    def health(self) -> dict[str, Any]:
        import requests

        return requests.get(f"{self.url}/healthz", timeout=10, headers=_auth()).json()

    def stop(self) -> None:
        stop_processes(self.proc, timeout=30)


def _auth() -> dict[str, str]:
    token = os.environ.get("ZIMG_INFERENCE_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def drive(url: str, size: tuple[int, int], steps: int, clients: int, total: int, seed: int = 0) -> dict[str, Any]:
    """``clients`` threads, one ``requests.Session`` each, send ``total`` requests between them as fast as answered."""
    import requests

    width, height = size
    lock = threading.Lock()
    next_index = iter(range(total))
    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors: list[str] = []

    def client() -> None:
        with requests.Session() as session:
            session.headers.update(_auth())
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                body = {
                    "prompt": f"benchmark image {seed + i}",
                    "width": width,
                    "height": height,
                    "num_inference_steps": steps,
                    "seed": seed + i,
                }
                start = time.perf_counter()
                try:
                    resp = session.post(f"{url}/v1/generate", json=body, timeout=900)
                except requests.RequestException as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    if resp.status_code == 200:
                        latencies.append(elapsed)
                        batch_sizes.append(int(resp.json().get("batch_size", 1)))
                    else:
                        errors.append(f"{resp.status_code}: {resp.text[:200]}")

    threads = [threading.Thread(target=client, name=f"client-{c}") for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "latencies": latencies, "batch_sizes": batch_sizes, "errors": errors}


def measure_http(
    server: Server, size: tuple[int, int], steps: int, clients: int, total: int, seed: int = 0
) -> dict[str, Any]:
    """One untimed warm-up round (``clients`` requests), then ``total`` timed requests; one table row."""
    width, height = size
    row: dict[str, Any] = {
        "width": width,
        "height": height,
        "max_batch": server.max_batch,
        "clients": clients,
        "requests": total,
        "steps": steps,
    }
    drive(server.url, size, steps, clients, clients, seed=10**6 + seed)  # new shapes: allocator, kernels
    before = server.health().get("batcher", {})
    run = drive(server.url, size, steps, clients, total, seed=seed)
    health = server.health()
    after = health.get("batcher", {})
    done = len(run["latencies"])
    row.update(wall_s=run["wall_s"], ok=done, errors=len(run["errors"]))
    if run["errors"]:
        row["first_error"] = run["errors"][0]
    if done:
        lat = sorted(run["latencies"])
        row.update(
            images_per_s=done / run["wall_s"],
            p50_s=statistics.median(lat),
            p95_s=lat[min(len(lat) - 1, int(0.95 * len(lat)))],
            max_batch_seen=max(run["batch_sizes"]),
        )
    batches = after.get("batches", 0) - before.get("batches", 0)
    images = after.get("images", 0) - before.get("images", 0)
    row["batches"] = batches
    row["mean_batch"] = images / batches if batches else None
    row["oom_splits"] = after.get("oom_splits", 0) - before.get("oom_splits", 0)
    peak = health.get("peak_memory_bytes")
    row["peak_gpu_mem_gib"] = peak / 2**30 if peak is not None else None
    return row


HTTP_HEADER = (
    f"{'size':>10} {'max_batch':>9} {'clients':>7} {'img/s':>9} {'mean B':>6} {'p50 s':>8} {'p95 s':>8}"
    f" {'ratio':>6} {'errors':>6} {'peak GPU mem':>13}"
)


def format_http_row(row: dict[str, Any]) -> str:
    size = f"{row['width']}x{row['height']}"
    mem = "n/a" if row.get("peak_gpu_mem_gib") is None else f"{row['peak_gpu_mem_gib']:.2f} GiB"
    mean_batch = "" if row.get("mean_batch") is None else f"{row['mean_batch']:.2f}"
    head = f"{size:>10} {row['max_batch']:>9} {row['clients']:>7}"
    if "images_per_s" not in row:
        return f"{head} {'failed':>9} {mean_batch:>6} {'':>8} {'':>8} {'':>6} {row['errors']:>6} {mem:>13}"
    ratio = "" if row.get("ratio") is None else f"{row['ratio']:.2f}"
    return (
        f"{head} {row['images_per_s']:>9.3f} {mean_batch:>6} {row['p50_s']:>8.3f} {row['p95_s']:>8.3f}"
        f" {ratio:>6} {row['errors']:>6} {mem:>13}"
    )


def http_sweep(
    backend: str,
    model: str | None,
    sizes: Sequence[tuple[int, int]],
    max_batches: Sequence[int],
    *,
    steps: int,
    clients: int,
    total: int,
    max_wait_ms: float,
    env: dict[str, str],
    log_dir: Path,
    load_timeout: float,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One server per ``max_batch`` (smallest first), every size against it; ``ratio`` is over ``max_batch`` 1.

    Sizes run smallest first, so a server's peak memory since start-up, read after each size, is that size's.
    """
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {"load_s": {}}
    ordered = sorted(sizes, key=lambda s: s[0] * s[1])
    for max_batch in sorted(set(max_batches)):
        server = Server(
            backend, max_batch, model=model, max_wait_ms=max_wait_ms, env=env, log_dir=log_dir, timeout=load_timeout
        )
        info["load_s"][max_batch] = server.load_s
        health = server.health()
        info["server"] = {k: v for k, v in health.items() if k not in ("batcher", "status")}
        print(f"server max_batch={max_batch} up in {server.load_s:.1f} s: {info['server']}", file=sys.stderr)
        try:
            for i, size in enumerate(ordered):
                row = measure_http(server, size, steps, clients, total, seed=1000 * i)
                rows.append(row)
                print(format_http_row(row), file=sys.stderr, flush=True)
        finally:
            server.stop()
    base = {(r["width"], r["height"]): r.get("images_per_s") for r in rows if r["max_batch"] == min(max_batches)}
    for row in rows:
        reference = base.get((row["width"], row["height"]))
        row["ratio"] = row["images_per_s"] / reference if reference and "images_per_s" in row else None
    rows.sort(key=lambda r: (ordered.index((r["width"], r["height"])), r["max_batch"]))
    return rows, info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="zimage", choices=["zimage", "sim"])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="zimage: local folder or hub id of a Z-Image pipeline")
    source.add_argument("--tiny", action="store_true", help="zimage: build the tiny random-weight model (CPU)")
    parser.add_argument("--http", action="store_true", help="through real zimg inference-server processes")
    parser.add_argument(
        "--sizes", help=f"WxH list (default {REAL_SIZES}; with --tiny {TINY_SIZES}, or {TINY_HTTP_SIZES} with --http)"
    )
    parser.add_argument(
        "--batch-sizes", help="batch sizes (backend mode, default 1,2,4,8) or servers' --max-batch (--http, 1,8)"
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="backend mode: timed calls per cell (median)")
    parser.add_argument("--clients", type=int, help="--http: concurrent clients (default: the largest batch size)")
    parser.add_argument("--requests", type=int, help="--http: timed requests per size (default 4 x clients)")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="--http: the servers' --max-wait-ms")
    parser.add_argument("--sim-a", type=float, default=0.2, help="sim: seconds per batch (t = a + b*B)")
    parser.add_argument("--sim-b", type=float, default=0.01, help="sim: seconds per image in the batch")
    parser.add_argument("--load-timeout", type=float, default=1800, help="--http: seconds to wait for a server")
    parser.add_argument("--device", help="backend mode: default cuda when available, else cpu")
    parser.add_argument("--dtype", help="backend mode: default bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--json", type=Path, help="write the rows and the environment here")
    args = parser.parse_args(argv)
    if args.backend == "zimage" and not (args.model or args.tiny):
        parser.error("the zimage backend needs --model or --tiny")
    if args.backend == "sim" and (args.model or args.tiny):
        parser.error("--model and --tiny are for the zimage backend")
    if args.http and (args.device or args.dtype):
        parser.error("--device and --dtype apply to backend mode; the server picks them itself")

    default_sizes = REAL_SIZES
    if args.tiny:
        default_sizes = TINY_HTTP_SIZES if args.http else TINY_SIZES
    sizes = [parse_size(s) for s in (args.sizes or default_sizes).split(",")]
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,8" if args.http else "1,2,4,8")).split(",")]
    sim_env = {"ZIMG_SIM_LATENCY_A": str(args.sim_a), "ZIMG_SIM_LATENCY_B": str(args.sim_b)}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.tiny:
            from workers.inference.tiny_model import make_tiny_model

            model = str(make_tiny_model(Path(tmp) / "tiny-zimage"))
        if args.http:
            clients = args.clients or max(batch_sizes)
            env = dict(sim_env) if args.backend == "sim" else {}
            if args.tiny:
                env["HF_HUB_OFFLINE"] = "1"  # a local folder: the hub is never needed
            rows, info = http_sweep(
                args.backend,
                model,
                sizes,
                batch_sizes,
                steps=args.steps,
                clients=clients,
                total=args.requests or 4 * clients,
                max_wait_ms=args.max_wait_ms,
                env=env,
                log_dir=Path(tmp),
                load_timeout=args.load_timeout,
            )
            print("\n".join([HTTP_HEADER, *(format_http_row(r) for r in rows)]))
            report: dict[str, Any] = {"mode": "http", **info, "environment": environment(None), "results": rows}
        else:
            start = time.perf_counter()
            if args.backend == "sim":
                from workers.inference.backends.sim import SimBackend, SimConfig

                backend: Backend = SimBackend(SimConfig(latency_a=args.sim_a, latency_b=args.sim_b))
            else:
                from workers.inference.backends.zimage import ZImageBackend

                backend = ZImageBackend(model, device=args.device, dtype=args.dtype)
            load_s = time.perf_counter() - start
            print(f"loaded {args.backend} in {load_s:.1f} s: {backend.health()}", file=sys.stderr)
            try:
                rows = sweep(backend, sizes, batch_sizes, args.steps, args.repeats)
                env_info = environment(backend)
            finally:
                backend.close()
            print(format_table(rows))
            report = {"mode": "backend", "load_s": load_s, "environment": env_info, "results": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
