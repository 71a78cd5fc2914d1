"""Scenario 3: how fast can jobs go in?

No workers run, so only the enqueue side is measured. Each figure has a baseline
from the same run:

* ``Producer.enqueue`` one by one, against RQ's own ``Queue.enqueue`` of the same
  function with the same arguments (what validation, retry policy and metadata cost);
* ``Producer.enqueue_many`` (one pipeline per chunk), against RQ's ``Queue.enqueue_many``;
* ``POST /v1/jobs`` over HTTP from ``clients`` concurrent keep-alive clients, against the
  same ``Producer.enqueue`` calls made in-process from as many threads (what HTTP costs).
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from rq import Queue
from rq.serializers import JSONSerializer

from zimg_queue.queue import JOB_FUNC

from .common import NA_WEB, Bench, row, run_threads

REQ = {"prompt": "benchmark: a paper boat", "width": 1024, "height": 1024, "seed": 1}


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def http_post_rate(port: int, total: int, clients: int) -> float:
    """Requests per second of ``POST /v1/jobs`` from ``clients`` threads, one keep-alive connection each."""
    per = total // clients
    body = json.dumps(REQ).encode()
    headers = {"Content-Type": "application/json"}

    def client(_: int) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/jobs", body, headers)  # connect outside the timed part
        resp = conn.getresponse()
        resp.read()
        if resp.status != 202:
            raise RuntimeError(f"POST /v1/jobs answered {resp.status}")
        t0 = time.perf_counter()
        for _ in range(per - 1):
            conn.request("POST", "/v1/jobs", body, headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 202:
                raise RuntimeError(f"POST /v1/jobs answered {resp.status}")
        conn.close()
        return time.perf_counter() - t0

    start = time.perf_counter()
    run_threads(clients, client)
    return _rate(clients * (per - 1), time.perf_counter() - start)


def run(single: int = 2000, batched: int = 20000, chunk: int = 1000, http_total: int = 4000, clients: int = 8):
    details: dict[str, Any] = {}
    rows = []
    with Bench("enqueue") as bench:
        producer = bench.producer()
        raw_queue = Queue("bench-raw", connection=producer.connection, serializer=JSONSerializer)
        for _ in range(50):  # warm up both paths
            producer.enqueue(REQ)
            raw_queue.enqueue(JOB_FUNC, REQ)

        t0 = time.perf_counter()
        for _ in range(single):
            raw_queue.enqueue(JOB_FUNC, REQ)
        raw_one = _rate(single, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(single):
            producer.enqueue(REQ)
        one = _rate(single, time.perf_counter() - t0)
        rows.append(row("enqueue one by one (Producer.enqueue)", one, "jobs/s", "rq Queue.enqueue", raw_one))

        datas = [Queue.prepare_data(JOB_FUNC, args=(REQ,)) for _ in range(chunk)]
        t0 = time.perf_counter()
        for _ in range(batched // chunk):
            with producer.connection.pipeline() as pipe:
                raw_queue.enqueue_many(datas, pipeline=pipe)
                pipe.execute()
        raw_many = _rate(batched // chunk * chunk, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(batched // chunk):
            producer.enqueue_many([REQ] * chunk)
        many = _rate(batched // chunk * chunk, time.perf_counter() - t0)
        rows.append(
            row(
                f"enqueue_many ({chunk} per call)",
                many,
                "jobs/s",
                "rq Queue.enqueue_many, one pipeline",
                raw_many,
                target=">= 10,000 jobs/s",
                met=many >= 10_000,
            )
        )

        per = max(1, http_total // clients)
        t0 = time.perf_counter()
        run_threads(clients, lambda _: [producer.enqueue(REQ) for _ in range(per)])
        threaded = _rate(per * clients, time.perf_counter() - t0)
        details.update(one_by_one=one, raw_one_by_one=raw_one, many=many, raw_many=raw_many, threaded=threaded)

        web = bench.web(env={"ZIMG_RATE_LIMIT": "1000000/60"})
        if web is None:
            rows.append(row(f"POST /v1/jobs, {clients} HTTP clients", NA_WEB, "req/s", target=">= 1,000 req/s"))
        else:
            port = int(web.url.rsplit(":", 1)[1])
            http_post_rate(port, min(400, http_total), clients)  # warm up
            rate = http_post_rate(port, http_total, clients)
            details["http"] = rate
            rows.append(
                row(
                    f"POST /v1/jobs, {clients} HTTP clients",
                    rate,
                    "req/s",
                    f"Producer.enqueue from {clients} threads in-process",
                    threaded,
                    target=">= 1,000 req/s",
                    met=rate >= 1000,
                )
            )
    return {"rows": rows, "details": details}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
