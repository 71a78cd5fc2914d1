"""Abuse limits in front of the model: body size, per-client rate of job creation, prompt blocklist.

Each costs almost nothing per request, and all three are asked for by the guide this
service follows: a GPU second is expensive, so the cheap checks run before anything is
enqueued. The rate limit's counters live in Redis, so it holds across every web process
and every host that serves the API.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import redis

from ..request import ValidationError
from ..settings import Settings

_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(text: str | int | None) -> tuple[int, int]:
    """``"600/60"``, ``"10/s"``, ``"600/minute"`` or ``"600"`` (per minute) -> (requests, window seconds).

    ``0``, ``""`` or ``"off"`` turn the limit off: (0, 0).
    """
    raw = str(text if text is not None else "").strip().lower()
    if raw in ("", "0", "off", "none"):
        return 0, 0
    count, _, per = raw.partition("/")
    per = per.strip() or "60"
    window = int(per) if per.isdigit() else _UNITS.get(per)
    if not count.strip().isdigit() or not window:
        raise ValueError(f"rate limit must look like '600/60' or '10/s' (got {text!r})")
    return int(count), int(window)


@dataclass(frozen=True)
class Limits:
    """The web layer's limits, parsed once from :class:`Settings`."""

    rate: int = 600
    window: int = 60
    max_body_bytes: int = Settings.model_fields["max_body_bytes"].default
    blocklist: tuple[str, ...] = ()
    _pattern: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """From ``ZIMG_RATE_LIMIT``, ``ZIMG_MAX_BODY_BYTES``, ``ZIMG_PROMPT_BLOCKLIST`` (``app.config`` or env)."""
        rate, window = parse_rate(settings.rate_limit)
        words = settings.prompt_blocklist
        blocklist = tuple(w.strip().lower() for w in words if w and w.strip())
        pattern = None
        if blocklist:
            alternatives = "|".join(re.escape(w) for w in sorted(blocklist, key=len, reverse=True))
            pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        return cls(rate, window, int(settings.max_body_bytes), blocklist, pattern)

    def check_prompt(self, prompt: str) -> None:
        """Reject a prompt holding a blocked word or phrase (whole words, any case)."""
        if self._pattern is None:
            return
        found = sorted({m.group(0).lower() for m in self._pattern.finditer(prompt)})
        if found:
            raise ValidationError.single("prompt", f"contains blocked word(s): {', '.join(found)}")


class RateLimiter:
    """A fixed-window counter per client in Redis: one pipelined ``INCR`` + ``EXPIRE`` per request.

    Hand-written, not Flask-Limiter, for a measured reason: its engine (``limits`` 5.8) takes one round trip
    to count and a second to read the window for the headers, 2.2-2.8x the wall time and 1.9-2.7x the CPU
    of this one per request (``python -m benchmarks.rate_limiter``, with ``limits`` installed: 120-127 us
    here, 261-340 us there), and every ``POST /v1/jobs`` pays it. Windows are aligned to the clock: a client
    may spend a second window's allowance right after the first ends (the usual fixed-window trade-off).
    """

    def __init__(self, connection: redis.Redis, rate: int, window: int, prefix: str = "zimg"):
        self.connection = connection
        self.rate = rate
        self.window = window
        self.prefix = prefix

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.window > 0

    def hit(self, client: str, now: float | None = None) -> tuple[bool, int, int]:
        """Count one request; return (allowed, remaining, seconds until the window resets)."""
        if not self.enabled:
            return True, -1, 0
        now = time.time() if now is None else now
        slot = int(now // self.window)
        key = f"{self.prefix}:ratelimit:{client}:{slot}"
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.window + 1)
            count = int(pipe.execute()[0])
        reset = max(1, int((slot + 1) * self.window - now + 0.999))
        return count <= self.rate, max(0, self.rate - count), reset
