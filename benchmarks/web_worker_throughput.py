"""Does whole-request buffering cost ``zimg web`` throughput? The buffering gthread worker against stock gthread.

Same run, same private Redis, same ``POST /v1/jobs`` load (``benchmarks.enqueue_rate.http_post_rate``:
8 client threads), rounds interleaved so drift hits both alike; the figure is the ratio of medians.

    python -m benchmarks.web_worker_throughput --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from zimg_queue.processes import stop_processes, wait_http
from zimg_queue.redis_server import EmbeddedRedis, free_port

from .enqueue_rate import http_post_rate

ROOT = Path(__file__).resolve().parents[1]
SERVE = "from zimg_queue.web.serve import serve; import sys; serve(port=int(sys.argv[1]), processes=2, threads=16)"
#: The same server with gunicorn's stock gthread worker put back in place of the buffering one.
STOCK = (
    "import gunicorn.workers.gthread as g, zimg_queue.web.buffering as b; b.BufferingThreadWorker = g.ThreadWorker; "
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = EmbeddedRedis(Path(tmp) / "redis", appendonly=False).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
        env.update(ZIMG_REDIS_URL=redis_server.url, ZIMG_RATE_LIMIT="0", ZIMG_DATA_DIR=tmp,
                   ZIMG_INFERENCE_URL=f"http://127.0.0.1:{free_port()}")  # fmt: skip
        rates: dict[str, list[float]] = {"stock": [], "buffering": []}
        try:
            for _ in range(args.rounds):
                for name, code in (("stock", STOCK + SERVE), ("buffering", SERVE)):
                    port = free_port()
                    proc = subprocess.Popen([sys.executable, "-c", code, str(port)], env=env, cwd=ROOT,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
                    try:
                        wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=60, ok_codes=(200, 503))
                        rates[name].append(http_post_rate(port, args.requests, 8))
                    finally:
                        stop_processes(proc)
        finally:
            redis_server.stop()
    median = {name: sorted(values)[len(values) // 2] for name, values in rates.items()}
    ratio = round(median["buffering"] / median["stock"], 3)
    print(json.dumps({"post_jobs_per_s": rates, "median": median, "buffering_over_stock": ratio}))


if __name__ == "__main__":
    main()
