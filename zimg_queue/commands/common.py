"""What every job command needs: the one Redis choice, a producer or API client, and terminal checks."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from ..connection import require, resolve_redis_url
from ..settings import Settings


def settings_for(args: argparse.Namespace) -> Settings:
    """``ZIMG_*`` settings with the Redis chosen as everywhere (``--redis-url`` first), checked to answer.

    The check is one short PING, so a Redis that is not there is one line at once, not a
    traceback after seconds of reconnect attempts.
    """
    settings = Settings.from_env()
    choice = require(resolve_redis_url(settings, flag=getattr(args, "redis_url", None)))
    return settings if choice.url == settings.redis_url else settings.with_(redis_url=choice.url)


def producer_for(args: argparse.Namespace) -> Any:
    """A :class:`Producer` on Redis, or with ``--api URL`` an :class:`ApiClient` with the same calls."""
    if getattr(args, "api", None):
        from ..web.client import ApiClient

        return ApiClient(args.api)
    from ..queue import Producer

    return Producer(settings=settings_for(args))


def is_terminal(stream: TextIO | None = None) -> bool:
    """Progress is drawn only for a person: never ``\\r`` sequences in a log file or a pipe."""
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
