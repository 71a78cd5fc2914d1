"""Settings, read once from the environment (or a Flask ``app.config``).

Every knob is an environment variable named ``ZIMG_<FIELD>`` in upper case, so the
same settings reach producers, workers and the inference server whether they
run under ``zimg up``, a Procfile runner or a Flask app.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

PRIORITIES = ("high", "normal", "low")
#: Where producers, workers and the web app look for Redis when ``ZIMG_REDIS_URL`` is unset.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _parse(kind: Any, raw: str) -> Any:
    if kind in (bool, "bool"):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind in (int, "int"):
        return int(raw)
    if kind in (float, "float"):
        return float(raw)
    if kind in ("tuple[float, ...]",):
        return tuple(float(x) for x in raw.split(",") if x.strip())
    if kind in ("tuple[str, ...]",):
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    if kind in ("str | None",):
        return raw or None
    return raw


@dataclass(frozen=True)
class Settings:
    """All of zimg-queue's configuration. Build with :meth:`from_env`."""

    #: ``None`` means: use ``redis://127.0.0.1:6379/0`` if it answers, else start a private server.
    redis_url: str | None = None
    inference_url: str = "http://127.0.0.1:7860"
    data_dir: str = ".zimg"
    image_dir: str | None = None
    queue_prefix: str = "zimg"
    job_timeout: int = 600
    result_ttl: int = 86_400
    failure_ttl: int = 7 * 86_400
    #: RQ ``Retry``: attempts after the first, and the base intervals (seconds) before each.
    max_retries: int = 3
    retry_intervals: tuple[float, ...] = (1.0, 4.0, 16.0)
    connect_timeout: float = 3.05
    read_timeout: float = 300.0
    max_pixels: int = 2048 * 2048
    #: On a CUDA out-of-memory answer, retry once at a smaller size keeping the aspect ratio.
    oom_downscale: bool = True
    api_token: str | None = field(default=None, repr=False)
    #: Seconds after which a started job whose worker stopped heart-beating is re-queued.
    lease_ttl: int = 15
    #: The web API's abuse limits (see ``zimg_queue.web.limits``) and reverse proxies in front of it.
    rate_limit: str = "600/60"
    #: Twice the longest valid body (two 2000-character prompts in 4-byte UTF-8) plus room for the rest.
    max_body_bytes: int = 64 * 1024
    prompt_blocklist: tuple[str, ...] = ()
    proxy_count: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``ZIMG_*`` variables from ``env`` (default ``os.environ``); keyword overrides win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"ZIMG_{f.name.upper()}")
            if raw is not None and f.name != "extra":
                values[f.name] = _parse(f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> Settings:
        """Settings from a Flask-style config: ``ZIMG_REDIS_URL`` etc., falling back to the environment."""
        known = {f.name for f in fields(cls)}
        overrides = {
            key[5:].lower(): value
            for key, value in config.items()
            if key.startswith("ZIMG_") and key[5:].lower() in known
        }
        return cls.from_env(**overrides)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def with_default_redis(self) -> Settings:
        """These settings, with ``DEFAULT_REDIS_URL`` when no ``redis_url`` is set (clients never start a server)."""
        return self if self.redis_url else replace(self, redis_url=DEFAULT_REDIS_URL)

    @property
    def images_path(self) -> Path:
        return Path(self.image_dir or Path(self.data_dir) / "images")

    def queue_name(self, priority: str = "normal") -> str:
        """The RQ queue for a priority; workers drain high, then normal, then low."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}")
        return f"{self.queue_prefix}-{priority}"

    @property
    def queue_names(self) -> list[str]:
        return [self.queue_name(p) for p in PRIORITIES]
