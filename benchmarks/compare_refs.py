"""``python -m benchmarks.compare_refs REF``: the HTTP-path queue overhead of two checkouts, in one run.

The overhead figure (issue 14 point 8) moves by 30 % from one run to the next on a shared 2-vCPU box,
more than most single changes to it. This runs a whole stack (private Redis, ``sim`` inference server,
one worker, ``zimg web``) from ``REF`` (a git worktree made for the run) and another from this checkout,
and alternates the same calls on both: a direct ``POST /v1/generate`` to each stack's inference server,
then ``POST /v1/jobs`` and ``GET /v1/jobs/<id>?wait=30`` on its web service. Both stacks run side by
side, so every figure is higher than :mod:`benchmarks.overhead`'s; the difference between them is the
point.

    python -m benchmarks.compare_refs cdb0ec0 --jobs 300
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from zimg_queue.processes import stop_processes, wait_http
from zimg_queue.redis_server import EmbeddedRedis, free_port

from .common import ROOT, percentiles, session

BODY = {"prompt": "benchmark: a lighthouse at dusk", "width": 256, "height": 256}


class Stack:
    """Redis, inference server, one worker and ``zimg web``, all run from the source tree ``tree``."""

    def __init__(self, tree: Path, images: Path) -> None:
        self.tree = tree
        self.tmp = Path(tempfile.mkdtemp(prefix="zimg-compare-"))
        self.redis = EmbeddedRedis(self.tmp / "redis", port=free_port(), appendonly=True).start()
        self.inference_url = f"http://127.0.0.1:{free_port()}"
        self.web_url = f"http://127.0.0.1:{free_port()}"
        self.procs: list[subprocess.Popen] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
        self.env.update(
            ZIMG_REDIS_URL=self.redis.url,
            ZIMG_INFERENCE_URL=self.inference_url,
            ZIMG_DATA_DIR=str(self.tmp / "data"),
            ZIMG_IMAGE_DIR=str(images),
            ZIMG_RATE_LIMIT="0",  # the benchmark's sequential calls would meet the shipped limit
            ZIMG_SIM_LATENCY_A="0",
            ZIMG_SIM_LATENCY_B="0",
            PYTHONPATH=str(tree),
            PYTHONUNBUFFERED="1",
        )

    def start(self) -> Stack:
        port = self.inference_url.rsplit(":", 1)[1]
        wait_http(f"{self.inference_url}/healthz", self._spawn("inference-server", "--port", port), timeout=60)
        self._spawn("worker")
        conn = redis.Redis.from_url(self.redis.url)
        deadline = time.monotonic() + 60
        while int(conn.scard("rq:workers")) < 1:  # type: ignore[arg-type]
            if time.monotonic() > deadline:
                raise RuntimeError(f"no worker registered for {self.tree}")
            time.sleep(0.05)
        web = self._spawn("web", "--port", self.web_url.rsplit(":", 1)[1])
        wait_http(f"{self.web_url}/healthz", web, timeout=60, ok_codes=(200, 503))
        return self

    def _spawn(self, *args: str) -> subprocess.Popen:
        log = (self.tmp / f"{args[0]}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "zimg_queue.cli", "--redis-url", self.redis.url, *args],
            env=self.env, cwd=self.tree, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop_processes(proc, timeout=15)
        self.redis.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def run(ref: str, jobs: int = 300, warmup: int = 20) -> dict[str, Any]:
    worktree = Path(tempfile.mkdtemp(prefix="zimg-ref-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), ref], check=True,
                   capture_output=True)  # fmt: skip
    # One image folder for both stacks (their seeds differ, so no file is shared): making a file costs the CPU of
    # the folder's place on disk, from 0.01 to 0.8 ms on this project's ext4 box, which is no version's doing.
    images = Path(tempfile.mkdtemp(prefix="zimg-compare-images-"))
    stacks: list[Stack] = []
    try:
        for tree in (worktree, ROOT):
            stacks.append(Stack(tree, images).start())
        http = session()
        base = secrets.randbelow(2**31)
        samples: dict[str, dict[str, list[float]]] = {s.tree.name: {"direct": [], "api": []} for s in stacks}
        for i in range(warmup + jobs):
            for k, stack in enumerate(stacks):
                seed = base + 4 * i + 2 * k
                t0 = time.perf_counter()
                http.post(f"{stack.inference_url}/v1/generate", json={**BODY, "seed": seed}).raise_for_status()
                t1 = time.perf_counter()
                created = http.post(f"{stack.web_url}/v1/jobs", json={**BODY, "seed": seed + 1})
                created.raise_for_status()
                status = http.get(f"{stack.web_url}/v1/jobs/{created.json()['id']}", params={"wait": 30}).json()
                t2 = time.perf_counter()
                if status["status"] != "finished":
                    raise RuntimeError(f"{stack.tree}: job ended {status['status']}: {status.get('error')}")
                if i >= warmup:
                    samples[stack.tree.name]["direct"].append(t1 - t0)
                    samples[stack.tree.name]["api"].append(t2 - t1)
    finally:
        for stack in stacks:
            stack.close()
        shutil.rmtree(images, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], capture_output=True)
    out: dict[str, Any] = {"ref": ref, "jobs": jobs}
    for label, tree in (("ref", worktree), ("this checkout", ROOT)):
        direct, api = percentiles(samples[tree.name]["direct"]), percentiles(samples[tree.name]["api"])
        out[label] = {"direct_ms": direct, "api_ms": api, "extra_p50_ms": round(api["p50"] - direct["p50"], 3)}
    out["extra_p50_ratio"] = round(out["this checkout"]["extra_p50_ms"] / out["ref"]["extra_p50_ms"], 3)
    return out


if __name__ == "__main__":
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="a git commit, branch or tag to compare this checkout with")
    parser.add_argument("--jobs", type=int, default=300)
    args = parser.parse_args()
    print(json.dumps(run(args.ref, args.jobs), indent=2))
