"""Redis connections that survive a Redis restart.

Every client here retries a failed command with exponential backoff (redis-py's
own ``Retry``) instead of crashing, so producers and workers ride out a Redis
that is restarting for a few seconds.
"""

from __future__ import annotations

from functools import lru_cache

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry


def connect(url: str, *, retries: int = 8) -> redis.Redis:
    """A client for ``url`` that reconnects by itself (about 10 s of backoff in all)."""
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), retries),
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError],
        health_check_interval=30,
        socket_connect_timeout=5,
        socket_keepalive=True,
    )


@lru_cache(maxsize=16)
def shared(url: str) -> redis.Redis:
    """One pooled client per URL per process: no connection set-up per job or per request."""
    return connect(url)


def answers(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING at ``url``."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except (redis.exceptions.RedisError, OSError):
        return False
