"""The HTTP half of ``benchmarks.gpu_batching``: real ``zimg inference-server`` processes and HTTP clients.

One server per ``--max-batch`` value (batching off at 1, then on), driven by N concurrent clients (threads,
one ``requests.Session`` each) after one untimed warm-up round. Per row: images/s, the mean batch the server
formed, the share of the wall time its backend was generating (GPU busy), client latency, the ratio to the
``--max-batch 1`` server at the same size and client count, and the server's peak GPU memory (CUDA only).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zimg_queue.processes import stop_processes


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
        extra_args: Sequence[str] = (),
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
        args += list(extra_args)
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
    from zimg_queue.settings import Settings

    token = Settings().secret("inference_token")
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
    row["failed_calls"] = after.get("failed_calls", 0) - before.get("failed_calls", 0)
    row["gpu_busy"] = (after.get("busy_s", 0.0) - before.get("busy_s", 0.0)) / run["wall_s"]
    peak = health.get("peak_memory_bytes")
    row["peak_gpu_mem_gib"] = peak / 2**30 if peak is not None else None
    return row


HTTP_HEADER = (
    f"{'size':>10} {'max_batch':>9} {'clients':>7} {'img/s':>9} {'mean B':>6} {'busy':>5} {'p50 s':>8} {'p95 s':>8}"
    f" {'ratio':>6} {'errors':>6} {'peak GPU mem':>13}"
)


def format_http_row(row: dict[str, Any]) -> str:
    size = f"{row['width']}x{row['height']}"
    mem = "n/a" if row.get("peak_gpu_mem_gib") is None else f"{row['peak_gpu_mem_gib']:.2f} GiB"
    mean_batch = "" if row.get("mean_batch") is None else f"{row['mean_batch']:.2f}"
    busy = f"{row['gpu_busy']:.0%}" if row.get("gpu_busy") is not None else ""
    head = f"{size:>10} {row['max_batch']:>9} {row['clients']:>7}"
    if "images_per_s" not in row:
        return f"{head} {'failed':>9} {mean_batch:>6} {busy:>5} {'':>8} {'':>8} {'':>6} {row['errors']:>6} {mem:>13}"
    ratio = "" if row.get("ratio") is None else f"{row['ratio']:.2f}"
    return (
        f"{head} {row['images_per_s']:>9.3f} {mean_batch:>6} {busy:>5} {row['p50_s']:>8.3f} {row['p95_s']:>8.3f}"
        f" {ratio:>6} {row['errors']:>6} {mem:>13}"
    )


def http_sweep(
    backend: str,
    model: str | None,
    sizes: Sequence[tuple[int, int]],
    max_batches: Sequence[int],
    *,
    steps: int,
    clients: Sequence[int],
    total: int | None,
    max_wait_ms: float,
    env: dict[str, str],
    log_dir: Path,
    load_timeout: float,
    extra_args: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One server per ``max_batch`` (smallest first), every size and client count against it.

    ``ratio`` is over the ``max_batch`` 1 server at the same size and client count. ``total`` requests per
    row (default 4 x clients). Sizes run smallest first, so a server's peak memory since start-up, read
    after each size, is that size's.
    """
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {"load_s": {}}
    ordered = sorted(sizes, key=lambda s: s[0] * s[1])
    for max_batch in sorted(set(max_batches)):
        server = Server(
            backend, max_batch, model=model, max_wait_ms=max_wait_ms, env=env, log_dir=log_dir,
            timeout=load_timeout, extra_args=extra_args,
        )  # fmt: skip
        info["load_s"][max_batch] = server.load_s
        health = server.health()
        info["server"] = {k: v for k, v in health.items() if k not in ("batcher", "status")}
        print(f"server max_batch={max_batch} up in {server.load_s:.1f} s: {info['server']}", file=sys.stderr)
        try:
            for i, size in enumerate(ordered):
                for count in clients:
                    row = measure_http(server, size, steps, count, total or 4 * count, seed=1000 * i + 100 * count)
                    rows.append(row)
                    print(format_http_row(row), file=sys.stderr, flush=True)
        finally:
            server.stop()
    lowest = min(max_batches)
    base = {(r["width"], r["height"], r["clients"]): r.get("images_per_s") for r in rows if r["max_batch"] == lowest}
    for row in rows:
        reference = base.get((row["width"], row["height"], row["clients"]))
        row["ratio"] = row["images_per_s"] / reference if reference and "images_per_s" in row else None
    rows.sort(key=lambda r: (ordered.index((r["width"], r["height"])), r["clients"], r["max_batch"]))
    return rows, info
