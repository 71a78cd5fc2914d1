"""Why ``zimg web`` keeps connections alive and closes each after ``ZIMG_WEB_KEEPALIVE_REQUESTS``.

Four ``zimg web`` services on one private Redis, differing only in their keep-alive settings: off
(``ZIMG_WEB_KEEPALIVE=0``, every request a new TCP connection), on without a cap, on with the shipped
cap of 20 requests per connection, and on with a cap of 100. Each round measures ``POST /v1/jobs`` from 8
clients (one keep-alive connection each, reconnecting when the server closes it) on every service in
turn, so drift on a shared box hits all four alike. Without a cap, persistent connections stay with the
gunicorn process that accepted them, however busy it is; a cap makes every client reconnect now and
then, and the process that accepts first (the idler one) takes it.

    python -m benchmarks.keepalive --rounds 3
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import Bench
from .enqueue_rate import http_post_rate

CONFIGS: dict[str, dict[str, str]] = {
    "off": {"ZIMG_WEB_KEEPALIVE": "0"},
    "on, no cap": {"ZIMG_WEB_KEEPALIVE": "5", "ZIMG_WEB_KEEPALIVE_REQUESTS": "1000000000"},
    "on, 100 requests per connection": {"ZIMG_WEB_KEEPALIVE_REQUESTS": "100"},
    "on, 20 requests per connection (shipped)": {},
}


def run(rounds: int = 3, total: int = 3000, clients: int = 8) -> dict[str, Any]:
    rates: dict[str, list[float]] = {name: [] for name in CONFIGS}
    with Bench("keepalive") as bench:
        webs = {name: bench.web(env={"ZIMG_RATE_LIMIT": "0", **env}) for name, env in CONFIGS.items()}
        for _ in range(rounds):
            for name, web in webs.items():
                assert web is not None and web.url
                port = int(web.url.rsplit(":", 1)[1])
                http_post_rate(port, 400, clients)  # warm up
                rates[name].append(http_post_rate(port, total, clients))
                bench.conn.delete("rq:queue:zimg-normal")  # no worker: keep Redis small between runs
    return {"clients": clients, "requests_per_run": total, "req_per_s": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.rounds), indent=2))


if __name__ == "__main__":
    main()
