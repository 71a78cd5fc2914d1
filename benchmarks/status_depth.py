"""Scenario 4: does reading a job's status get slower as the queue grows?

No workers run. With ``shallow`` jobs queued, then with ``deep`` jobs queued, the
status of the most recently queued jobs (the worst case for the bounded queue-position
lookup) is read ``reads`` times, in-process (``Producer.status``) and over HTTP
(``GET /v1/jobs/<id>``) when ``zimg web`` exists. The figure is deep / shallow.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from .common import NA_WEB, Bench, percentiles, row

REQ = {"prompt": "benchmark: a lantern", "width": 1024, "height": 1024}


def fill(producer, count: int, chunk: int = 1000) -> list[str]:
    ids: list[str] = []
    while len(ids) < count:
        ids += producer.enqueue_many([{**REQ, "seed": len(ids) + i} for i in range(min(chunk, count - len(ids)))])
    return ids


def read_inprocess(producer, ids: list[str], reads: int) -> list[float]:
    out = []
    for i in range(reads):
        job_id = ids[i % len(ids)]
        t0 = time.perf_counter()
        producer.status(job_id)
        out.append(time.perf_counter() - t0)
    return out


def read_http(port: int, ids: list[str], reads: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for i in range(reads):
        t0 = time.perf_counter()
        conn.request("GET", f"/v1/jobs/{ids[i % len(ids)]}")
        resp = conn.getresponse()
        resp.read()
        out.append(time.perf_counter() - t0)
        if resp.status != 200:
            raise RuntimeError(f"GET /v1/jobs answered {resp.status}")
    conn.close()
    return out


def run(shallow: int = 100, deep: int = 100_000, reads: int = 2000, probe: int = 20) -> dict[str, Any]:
    results: dict[str, dict[str, dict[str, float]]] = {"in-process": {}, "http": {}}
    with Bench("status") as bench:
        producer = bench.producer()
        web = bench.web()
        port = int(web.url.rsplit(":", 1)[1]) if web else None
        ids = fill(producer, shallow)
        for depth, target in (("shallow", shallow), ("deep", deep)):
            if len(ids) < target:
                ids += fill(producer, target - len(ids))
            probe_ids = ids[-probe:]  # the newest: the furthest from the head of the queue
            read_inprocess(producer, probe_ids, 100)  # warm up
            results["in-process"][depth] = percentiles(read_inprocess(producer, probe_ids, reads))
            if port:
                read_http(port, probe_ids, 100)
                results["http"][depth] = percentiles(read_http(port, probe_ids, reads))
        queued = bench.conn.llen(f"rq:queue:{bench.settings.queue_name('normal')}")
    rows = []
    for how, label in (("in-process", "Producer.status"), ("http", "GET /v1/jobs/<id>")):
        res = results[how]
        for p in ("p50", "p99"):
            name = f"status read {p} at {deep:,} queued ({label})"
            if not res:
                rows.append(row(name, NA_WEB, "ms"))
                continue
            d, s = res["deep"][p], res["shallow"][p]
            rows.append(
                row(name, d, "ms", f"same read at {shallow} queued: {s:.3f} ms", s, target="ratio ~1", met=d <= 1.5 * s)
            )
    return {"rows": rows, "details": {"queued_at_end": queued, "reads": reads, "ms": results}}


if __name__ == "__main__":
    print(json.dumps(run(deep=10_000), indent=2))
