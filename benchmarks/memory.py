"""Scenario 5: peak memory of each long-running process.

Starts the inference server (``sim``), one worker and ``zimg web`` (when it exists),
runs ``jobs`` jobs at 1024x1024 through them (through the HTTP API when there is one,
so the web service does real work too), then reads each process's peak resident set
size (``VmHWM`` in ``/proc/<pid>/status``). The baseline is a bare Python interpreter
started the same way and measured the same way.
"""

from __future__ import annotations

import http.client
import json
import secrets
import subprocess
import sys
import time
from typing import Any

from .common import NA_WEB, Bench, row, vm_hwm_kib


def bare_python_kib() -> int | None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; print(1, flush=True); time.sleep(30)"], stdout=subprocess.PIPE
    )
    try:
        proc.stdout.readline()  # type: ignore[union-attr]
        return vm_hwm_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def run(jobs: int = 50, size: int = 1024) -> dict[str, Any]:
    baseline = bare_python_kib()
    with Bench("memory") as bench:
        inference = bench.inference(latency_a=0, latency_b=0)
        worker = bench.worker(1)
        web = bench.web(env={"ZIMG_RATE_LIMIT": "1000000/60"})
        producer = bench.producer()
        seed = secrets.randbelow(2**31)
        body = {"prompt": "benchmark: a mountain lake", "width": size, "height": size}
        if web is None:
            for i in range(jobs):
                producer.wait(producer.enqueue(body, seed=seed + i), timeout=120)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", int(web.url.rsplit(":", 1)[1]), timeout=120)
            for i in range(jobs):
                conn.request(
                    "POST", "/v1/jobs", json.dumps({**body, "seed": seed + i}), {"Content-Type": "application/json"}
                )
                resp = conn.getresponse()
                job_id = json.loads(resp.read())["id"]
                conn.request("GET", f"/v1/jobs/{job_id}?wait=60")
                resp = conn.getresponse()
                resp.read()
            conn.close()
        time.sleep(0.2)
        peaks = {
            "worker": vm_hwm_kib(worker.pid),
            "inference server (sim)": vm_hwm_kib(inference.pid),
            "web": vm_hwm_kib(web.pid) if web else None,
        }
    rows = []
    base_mib = round(baseline / 1024, 1) if baseline else None
    for name, kib in peaks.items():
        label = f"peak RSS: {name}, after {jobs} jobs at {size}x{size}"
        if name == "web" and web is None:
            rows.append(row(label, NA_WEB, "MiB"))
            continue
        rows.append(row(label, round(kib / 1024, 1) if kib else None, "MiB", "bare python interpreter", base_mib))
    return {"rows": rows, "details": {"baseline_kib": baseline, "peak_kib": peaks}}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
