"""Which Redis, chosen one way for every entry point, and connections that survive a Redis restart.

:func:`resolve_redis_url` is the only place a Redis URL is chosen. ``Producer()``,
``zimg_queue.enqueue``, every ``zimg`` subcommand and the Flask extension all go through
it (``Settings.with_default_redis`` calls it), so they can never disagree. In order:

1. ``--redis-url`` (any subcommand, before or after its name);
2. ``ZIMG_REDIS_URL`` from the environment, a ``.env`` file or a Flask ``app.config``;
3. the private Redis a running ``zimg up`` of this user started (its URL is recorded in
   ``$ZIMG_DATA_DIR/redis/url``, removed when the last ``zimg up`` using it stops: a second one
   of the same data folder shares it, see :class:`zimg_queue.redis_server.SharedRedis`);
4. ``redis://127.0.0.1:6379/0``, with a WARNING: on a shared machine that may be someone
   else's Redis, so the process says so, once, and how to choose.

Each process logs once which Redis it uses and where the choice came from.

Every client here retries a failed command with exponential backoff (redis-py's
own ``Retry``) instead of crashing, so producers and workers ride out a Redis
that is restarting for a few seconds. A command-line tool first checks with one short
PING (:func:`require`) so that a Redis that is simply not there fails in under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import redis
import structlog
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry

from .packing import command_packer
from .settings import DEFAULT_REDIS_URL

if TYPE_CHECKING:
    from .settings import Settings

log = structlog.get_logger(__name__)

#: The file, under the data folder, where ``zimg up`` records the URL of the private Redis it started.
PRIVATE_URL_FILE = Path("redis") / "url"


class RedisUnavailable(ConnectionError):
    """No Redis answers at the chosen URL. ``str()`` is one line: where, why it was chosen, what to do."""


@dataclass(frozen=True)
class RedisChoice:
    """A Redis URL and where it came from (``--redis-url``, ``ZIMG_REDIS_URL``, ``.env``, ``app.config``...)."""

    url: str
    source: str

    def __str__(self) -> str:
        return f"{redacted(self.url)} (from {self.source})"


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def private_server_file(data_dir: str | Path) -> Path:
    return Path(data_dir) / PRIVATE_URL_FILE


def recorded_private_server(data_dir: str | Path) -> str | None:
    """The URL a running ``zimg up`` recorded for its private Redis, if that Redis answers."""
    try:
        url = private_server_file(data_dir).read_text().strip()
    except OSError:
        return None
    return url if url and answers(url, timeout=0.3) else None


def _setting_source(settings: Settings) -> str:
    """Where ``settings.redis_url`` came from: the environment, ``.env``, or the code that built the settings."""
    from .settings import Settings, SettingsError

    try:
        if Settings(_env_file=None).redis_url == settings.redis_url:  # type: ignore[call-arg]
            return "ZIMG_REDIS_URL"
        if Settings().redis_url == settings.redis_url:
            return ".env"
    except SettingsError:
        pass
    return "settings"


def resolve_redis_url(settings: Settings, *, flag: str | None = None, source: str | None = None) -> RedisChoice:
    """The one way every entry point chooses its Redis (see the module docstring); logs the choice once.

    ``flag`` is ``--redis-url``; ``source`` names where ``settings.redis_url`` came from when the
    caller knows better than the environment (the Flask extension passes ``"app.config"``).
    """
    if flag:
        choice = RedisChoice(flag, "--redis-url")
    elif settings.redis_url:
        choice = RedisChoice(settings.redis_url, source or _setting_source(settings))
    else:
        recorded = recorded_private_server(settings.data_dir)
        if recorded:
            where = private_server_file(settings.data_dir)
            choice = RedisChoice(recorded, f"the private Redis of a running `zimg up`, recorded in {where}")
        else:
            choice = RedisChoice(DEFAULT_REDIS_URL, "the default: ZIMG_REDIS_URL is not set")
    announce(choice)
    return choice


_announced: set[str] = set()


def announce(choice: RedisChoice) -> None:
    """Log, once per process, which Redis is used and why; the default is a warning (it may be anyone's).

    Once per URL: the first announcement names the real source; settings handed on later say nothing new.
    """
    if choice.url in _announced:
        return
    _announced.add(choice.url)
    default = choice.url == DEFAULT_REDIS_URL and choice.source.startswith("the default")
    hint = "on a shared machine this may be someone else's Redis: set ZIMG_REDIS_URL or pass --redis-url"
    # As a library, structlog goes through the standard library (zimg_queue.logs), never to stdout.
    if default:
        log.warning("redis_default", url=choice.url, source=choice.source, hint=hint)
    else:
        log.info("redis", url=redacted(choice.url), source=choice.source)


def require(choice: RedisChoice, timeout: float = 0.5) -> RedisChoice:
    """Fail fast, in one line, when no Redis answers (instead of seconds of retries and a traceback)."""
    if not answers(choice.url, timeout=timeout):
        raise RedisUnavailable(
            f"no Redis answers at {choice}: start the stack with `zimg up`, "
            "or point ZIMG_REDIS_URL (or --redis-url) at a running Redis"
        )
    return choice


def connect(url: str, *, retries: int = 8) -> redis.Redis:
    """A client for ``url`` that reconnects by itself (about 10 s of backoff in all)."""
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), retries),
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError],
        health_check_interval=30,
        socket_connect_timeout=5,
        socket_keepalive=True,
        command_packer=command_packer(),  # hiredis packs each command in one call (zimg_queue.packing)
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
