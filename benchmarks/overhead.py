"""Scenario 1: what the queue adds to one image.

N sequential jobs through the whole path (``Producer.enqueue`` -> Redis -> one
``zimg worker`` -> ``sim`` inference server with zero latency -> image file ->
``Producer.wait`` sees ``finished``) against N direct ``POST /v1/generate`` calls to
the same server from the same client process. The two kinds of call alternate,
so drift on a noisy machine hits both alike. Every job has a distinct seed, so the
worker's file cache never answers; a second, smaller series repeats an earlier
request to show the cache-hit path.

With ``http=True`` (issue 14 point 8) a third kind of call alternates with them: the
HTTP surface a client sees, ``POST /v1/jobs`` then ``GET /v1/jobs/<id>?wait=30`` on
``zimg web``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from .common import Bench, percentiles, row, session


def run(
    n: int = 500, *, size: int = 256, cache_hits: int = 100, warmup: int = 20, http_api: bool = True
) -> dict[str, Any]:
    with Bench("overhead") as bench:
        bench.inference(latency_a=0, latency_b=0)
        bench.worker(1)
        web = bench.web(env={"ZIMG_RATE_LIMIT": "0"}) if http_api else None
        producer = bench.producer()
        http = session()
        url = f"{bench.settings.inference_url}/v1/generate"
        base_seed = secrets.randbelow(2**31)
        body = {"prompt": "benchmark: a lighthouse at dusk", "width": size, "height": size}

        def direct(seed: int) -> float:
            t0 = time.perf_counter()
            resp = http.post(url, json={**body, "seed": seed})
            resp.raise_for_status()
            resp.json()
            return time.perf_counter() - t0

        def queued(seed: int) -> float:
            t0 = time.perf_counter()
            status = producer.wait(producer.enqueue(body, seed=seed), timeout=60)
            elapsed = time.perf_counter() - t0
            if status["status"] != "finished":
                raise RuntimeError(f"benchmark job ended {status['status']}: {status.get('error')}")
            return elapsed

        def over_http(seed: int) -> float:
            assert web is not None and web.url
            t0 = time.perf_counter()
            created = http.post(f"{web.url}/v1/jobs", json={**body, "seed": seed})
            created.raise_for_status()
            status = http.get(f"{web.url}/v1/jobs/{created.json()['id']}", params={"wait": 30}).json()
            elapsed = time.perf_counter() - t0
            if status["status"] != "finished":
                raise RuntimeError(f"benchmark job ended {status['status']}: {status.get('error')}")
            return elapsed

        for i in range(warmup):
            direct(base_seed + 10_000_000 + i)
            queued(base_seed + 10_000_000 + i)
            if web is not None:
                over_http(base_seed + 20_000_000 + i)

        direct_s, queued_s, http_s = [], [], []
        for i in range(n):
            direct_s.append(direct(base_seed + i))
            queued_s.append(queued(base_seed + i))
            if web is not None:
                http_s.append(over_http(base_seed + 30_000_000 + i))

        hit_direct, hit_queued = [], []
        for i in range(min(cache_hits, n)):
            hit_direct.append(direct(base_seed + i))
            hit_queued.append(queued(base_seed + i))  # this request's file exists: the worker's cache answers

    d, q = percentiles(direct_s), percentiles(queued_s)
    extra = {k: round(q[k] - d[k], 3) for k in ("p50", "p95", "p99")}
    hd, hq = percentiles(hit_direct), percentiles(hit_queued)
    hit_extra = {k: round(hq[k] - hd[k], 3) for k in ("p50", "p95", "p99")}
    base = f"direct POST /v1/generate {size}x{size}"
    targets = {"p50": 3.0, "p95": None, "p99": 15.0}
    rows = []
    for k in ("p50", "p95", "p99"):
        t = targets[k]
        rows.append(
            row(
                f"queue overhead {k} (extra ms/job, {n} jobs)",
                extra[k],
                "ms",
                f"{base} {k} {d[k]:.2f} ms; queued {q[k]:.2f} ms",
                d[k],
                ratio_value=round(q[k] / d[k], 2) if d[k] else None,
                target=f"<= {t:g} ms" if t else None,
                met=(extra[k] <= t) if t else None,
            )
        )
    http_extra: dict[str, float] = {}
    if http_s:
        h = percentiles(http_s)
        http_extra = {k: round(h[k] - d[k], 3) for k in ("p50", "p95", "p99")}
        rows.append(
            row(
                f"queue overhead p50 through the HTTP API ({n} jobs: POST /v1/jobs, GET ?wait=)",
                http_extra["p50"],
                "ms",
                f"{base} p50 {d['p50']:.2f} ms; via the API {h['p50']:.2f} ms",
                d["p50"],
                ratio_value=round(h["p50"] / d["p50"], 2) if d["p50"] else None,
                target="<= 8 ms",
                met=http_extra["p50"] <= 8.0,
            )
        )
    rows.append(
        row(
            f"queue overhead p50, file-cache hit ({len(hit_queued)} jobs)",
            hit_extra["p50"],
            "ms",
            f"{base} p50 {hd['p50']:.2f} ms; queued {hq['p50']:.2f} ms",
            hd["p50"],
            ratio_value=round(hq["p50"] / hd["p50"], 2) if hd["p50"] else None,
        )
    )
    return {
        "rows": rows,
        "details": {
            "jobs": n,
            "size": f"{size}x{size}",
            "direct_ms": d,
            "queued_ms": q,
            "extra_ms": extra,
            "http_api": {"queued_ms": percentiles(http_s), "extra_ms": http_extra} if http_s else None,
            "cache_hit": {"jobs": len(hit_queued), "direct_ms": hd, "queued_ms": hq, "extra_ms": hit_extra},
        },
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 100), indent=2))
