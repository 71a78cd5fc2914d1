"""The guide's daily-poster run, in miniature: 3 products x 3 presets, watermarked, with a manifest.

    python examples/daily_posters.py [OUT_DIR]

It starts a private Redis, the ``sim`` inference server and two workers, runs the
campaign from ``examples/daily_posters/`` (the same thing ``zimg batch
examples/daily_posters/products.csv --presets examples/daily_posters/presets.toml
--manifest OUT/manifest.csv`` does against a running stack), prints the manifest and
stops everything. No GPU and no network are needed. Only the producer reads the presets file:
the workers get each job's expanded request and its watermark with the job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent / "daily_posters"
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from zimg_queue import campaign  # noqa: E402
from zimg_queue.processes import stop_processes, wait_http  # noqa: E402
from zimg_queue.queue import Producer  # noqa: E402
from zimg_queue.redis_server import EmbeddedRedis, free_port  # noqa: E402
from zimg_queue.settings import Settings  # noqa: E402

PRESETS = HERE / "presets.toml"
PRODUCTS = HERE / "products.csv"


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    redis = EmbeddedRedis(out / "redis", port=free_port()).start()
    port = free_port()
    env = {
        **os.environ,
        "ZIMG_REDIS_URL": redis.url,
        "ZIMG_INFERENCE_URL": f"http://127.0.0.1:{port}",
        "ZIMG_IMAGE_DIR": str(out / "images"),
        "ZIMG_DATA_DIR": str(out / "data"),
        "ZIMG_SIM_LATENCY_A": "0.01",
        "ZIMG_SIM_LATENCY_B": "0.005",
        "PYTHONUNBUFFERED": "1",
    }
    zimg = [sys.executable, "-m", "zimg_queue.cli"]
    log = (out / "stack.log").open("ab")
    procs = [subprocess.Popen([*zimg, "inference-server", "--port", str(port)], env=env, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT)]  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", procs[0], timeout=60)
        procs.append(subprocess.Popen([*zimg, "worker", "--processes", "2"], env=env, cwd=ROOT, stdout=log,
                                      stderr=subprocess.STDOUT))  # fmt: skip
        settings = Settings.from_env(env, redis_url=redis.url)
        producer = Producer(settings=settings)
        producer.presets_path = str(PRESETS)
        data = campaign.run(
            producer, "daily-posters", PRODUCTS, ["main", "detail", "social"],
            manifest_path=out / "manifest.csv", timeout=120, on_progress=campaign.progress_bar(),
        )  # fmt: skip
        campaign.write_manifest(data, out / "manifest.json")
        for row in data["rows"]:
            print(f"{row['item']:<7} {row['preset']:<7} {row['status']:<9} {row['path'] or row['error']}")
        print(f"manifest: {out / 'manifest.csv'}")
        return 0 if data["counts"] == {"finished": 9} else 1
    finally:
        stop_processes(*reversed(procs))
        redis.stop()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="daily-posters-"))
    sys.exit(main(target))
