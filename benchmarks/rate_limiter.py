"""Why the API's rate limit is our own: :class:`zimg_queue.web.limits.RateLimiter` against ``limits``.

``limits`` is the engine of Flask-Limiter, the library a Flask developer would reach for. Its Redis
strategies take one round trip to count a request and another to read the window's state for the
``X-RateLimit-Remaining`` and ``Retry-After`` headers; ours counts and sets the expiry in one pipeline
and computes the reset from the clock. Every ``POST /v1/jobs`` pays this. Not in ``python -m benchmarks``
(``limits`` is not a dependency); run it with ``pip install limits`` first:

    python -m benchmarks.rate_limiter
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from zimg_queue.redis_server import EmbeddedRedis, free_port
from zimg_queue.web.limits import RateLimiter


def run(n: int = 2000, rounds: int = 5) -> dict[str, Any]:
    import limits  # type: ignore[import-not-found]
    from limits.storage import storage_from_string  # type: ignore[import-not-found]
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter  # type: ignore[import-not-found]

    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="zimg-bench-limiter-")) / "redis", port=free_port()).start()
    try:
        ours = RateLimiter(redis.Redis.from_url(server.url), 10**9, 60)
        storage = storage_from_string(server.url.rsplit("/", 1)[0])
        item = limits.parse("1000000000/minute")

        def library(strategy: Any) -> Callable[[], Any]:
            namespace = type(strategy).__name__  # each strategy its own keys

            def call() -> Any:
                allowed = strategy.hit(item, namespace, "10.0.0.1")
                stats = strategy.get_window_stats(item, namespace, "10.0.0.1")  # for the headers
                return allowed, stats.remaining, stats.reset_time

            return call

        kinds: dict[str, Callable[[], Any]] = {
            "ours": lambda: ours.hit("10.0.0.1"),
            "limits fixed window": library(FixedWindowRateLimiter(storage)),
            "limits moving window": library(MovingWindowRateLimiter(storage)),
        }
        wall: dict[str, list[float]] = {k: [] for k in kinds}
        cpu: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(rounds):  # alternating rounds, so drift hits all alike
            for name, call in kinds.items():
                c0, t0 = time.process_time(), time.perf_counter()
                for _ in range(n):
                    call()
                wall[name].append((time.perf_counter() - t0) / n * 1e6)
                cpu[name].append((time.process_time() - c0) / n * 1e6)
    finally:
        server.stop()
    out = {name: {"wall_us": round(statistics.median(wall[name]), 1), "cpu_us": round(statistics.median(cpu[name]), 1)}
           for name in kinds}  # fmt: skip
    for name in kinds:
        out[name]["ratio_wall"] = round(out[name]["wall_us"] / out["ours"]["wall_us"], 2)
        out[name]["ratio_cpu"] = round(out[name]["cpu_us"] / out["ours"]["cpu_us"], 2)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
