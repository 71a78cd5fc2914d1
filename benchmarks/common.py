"""Process management and statistics shared by the benchmark scenarios.

Every scenario runs against its own :class:`Bench`: a private ``redis-server``
(AOF on, as ``zimg up`` starts it) on a free port in a temporary folder, and real
``python -m zimg_queue.cli ...`` child processes. Nothing touches a Redis or a
server that was already running.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from zimg_queue.processes import stop_processes, wait_http
from zimg_queue.queue import Producer
from zimg_queue.redis_server import EmbeddedRedis, free_port
from zimg_queue.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
NA_WEB = "n/a (zimg web not available)"


def has_web() -> bool:
    """True when this checkout has the ``zimg web`` service: the package and its ``zimg web`` command."""
    try:
        if importlib.util.find_spec("zimg_queue.web") is None:
            return False
    except (ImportError, ValueError):
        return False
    import argparse

    from zimg_queue.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return "web" in action.choices
    return False


def percentiles(values_s: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles of durations in seconds, reported in milliseconds."""
    ordered = sorted(values_s)
    out: dict[str, float] = {}
    for p in points:
        if not ordered:
            out[f"p{p}"] = float("nan")
            continue
        rank = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
        out[f"p{p}"] = round(ordered[rank] * 1000, 3)
    if ordered:
        out["mean"] = round(statistics.fmean(ordered) * 1000, 3)
    return out


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size (``VmHWM``) of a live process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Child:
    name: str
    popen: subprocess.Popen
    log: Path
    url: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Bench:
    """A private Redis plus the zimg processes one scenario starts; :meth:`close` stops them all."""

    name: str
    keep_logs: bool = False
    tmp: Path = field(init=False)
    redis: EmbeddedRedis = field(init=False)
    settings: Settings = field(init=False)
    children: list[Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"zimg-bench-{self.name}-"))
        self.redis = EmbeddedRedis(self.tmp / "redis", port=free_port(), appendonly=True).start()
        self.settings = Settings(
            redis_url=self.redis.url,
            inference_url=f"http://127.0.0.1:{free_port()}",
            data_dir=str(self.tmp / "data"),
            image_dir=str(self.tmp / "images"),
        )
        self.conn = redis.Redis.from_url(self.redis.url)

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
        env.update(
            ZIMG_REDIS_URL=self.redis.url,
            ZIMG_INFERENCE_URL=self.settings.inference_url,
            ZIMG_DATA_DIR=self.settings.data_dir,
            ZIMG_IMAGE_DIR=str(self.settings.images_path),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def producer(self) -> Producer:
        return Producer(settings=self.settings)

    def spawn(
        self,
        name: str,
        *args: str,
        url: str | None = None,
        env: dict[str, str] | None = None,
        health_codes: tuple[int, ...] = (200,),
        timeout: float = 60,
    ) -> Child:
        log = self.tmp / "logs" / f"{name}-{len(self.children)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "zimg_queue.cli", "--redis-url", self.redis.url, *args],
                env=self.env(**(env or {})),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        child = Child(name, popen, log, url)
        self.children.append(child)
        if url:
            try:
                wait_http(f"{url}/healthz", popen, timeout=timeout, ok_codes=health_codes)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n--- {log} ---\n{log.read_text(errors='replace')[-3000:]}") from None
        return child

    def inference(self, *, max_batch: int = 8, max_wait_ms: float | None = None, **sim: float | str) -> Child:
        """The inference server with the ``sim`` backend; keyword arguments become ``ZIMG_SIM_*``.

        ``max_wait_ms`` left out is the shipped default (``zimg inference-server``'s own, 0): a window here
        would hold each request of a sequential client until the window after the previous batch ran out,
        which is not what ships (it once cost the overhead benchmark about 3 ms per job).
        """
        port = self.settings.inference_url.rsplit(":", 1)[1]
        env = {f"ZIMG_SIM_{k.upper()}": str(v) for k, v in sim.items()}
        args = ["inference-server", "--backend", "sim", "--port", port, "--max-batch", str(max_batch)]
        if max_wait_ms is not None:
            args += ["--max-wait-ms", str(max_wait_ms)]
        return self.spawn("inference", *args, url=self.settings.inference_url, env=env)

    def worker(self, processes: int = 1, *, wait_ready: bool = True, timeout: float = 60) -> Child:
        """``zimg worker``; waits until ``processes`` RQ workers have registered in Redis."""
        before = self.worker_count()
        child = self.spawn("worker", "worker", "--processes", str(processes))
        if wait_ready:
            deadline = time.monotonic() + timeout
            while self.worker_count() < before + processes:
                if not child.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"workers did not start\n{child.log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.05)
        return child

    def worker_count(self) -> int:
        return int(self.conn.scard("rq:workers"))

    def web(self, env: dict[str, str] | None = None) -> Child | None:
        """``zimg web`` on a free port, or ``None`` when this checkout has no web service."""
        if not has_web():
            return None
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        return self.spawn("web", "web", "--port", str(port), url=url, env=env, health_codes=(200, 503))

    def stop(self, child: Child, timeout: float = 15) -> None:
        stop_processes(child.popen, timeout=timeout)

    def close(self) -> None:
        for child in reversed(self.children):
            self.stop(child)
        self.redis.stop()
        if not self.keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)


def run_threads(n: int, target: Callable[[int], Any]) -> list[Any]:
    """Run ``target(i)`` on ``n`` threads started together; return their results in order."""
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def session() -> requests.Session:
    """One keep-alive HTTP session, as a real client would hold."""
    s = requests.Session()
    s.trust_env = False
    return s


def row(
    metric: str,
    value: float | str | None,
    unit: str,
    baseline: str | None = None,
    baseline_value: float | None = None,
    *,
    ratio_value: float | None = None,
    target: str | None = None,
    met: bool | None = None,
) -> dict[str, Any]:
    """One line of the results table: a figure, its baseline measured in the same run, and the ratio."""
    if ratio_value is None and isinstance(value, (int, float)):
        ratio_value = ratio(value, baseline_value)
    return {
        "metric": metric,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio": ratio_value,
        "target": target,
        "met": met,
    }


def ratio(value: float | None, baseline: float | None, digits: int = 2) -> float | None:
    if value is None or baseline in (None, 0):
        return None
    return round(value / baseline, digits)
