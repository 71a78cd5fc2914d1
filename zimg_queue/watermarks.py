"""Watermark images travel with the job, by content: the producer publishes, the worker fetches.

A watermark is named in a request and resolved by the producer against the operator's
configuration (``[watermarks]`` in ``ZIMG_PRESETS``, or ``ZIMG_WATERMARK_DIR``). The
producer then stores the file's bytes in Redis under their SHA-256 and puts the digest in
the job's options, so a worker needs none of the producer's configuration: whatever the
producer accepted, every worker can do. Keys are content addresses (a changed image is a
new key, never an overwrite) and expire ``MIN_TTL`` (or the result/failure TTL, if longer)
after the last job that used them was enqueued.
"""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

KEY = "zimg:watermark:{}"
MIN_TTL = 30 * 86_400
#: A watermark is a small logo; a bigger file is refused rather than copied into Redis per job.
MAX_BYTES = 4 * 1024 * 1024
#: Re-publish (refresh the TTL) at most this often per digest per process.
REFRESH_S = 60.0

_published: dict[tuple[int, str], float] = {}


@lru_cache(maxsize=32)
def _read(path: str, mtime: float) -> tuple[bytes, str]:
    data = Path(path).read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def read(path: Path) -> tuple[bytes, str]:
    """The file's bytes and SHA-256, cached until the file changes."""
    return _read(str(path), path.stat().st_mtime)


def publish(conn: Any, path: Path, ttl: int = MIN_TTL) -> str:
    """Store the watermark file's bytes under its digest (at most once a minute per process); return the digest."""
    data, digest = read(path)
    if len(data) > MAX_BYTES:
        raise ValueError(f"watermark {path} is {len(data)} bytes; at most {MAX_BYTES} are carried with jobs")
    now = time.monotonic()
    slot = (id(conn), digest)
    if now - _published.get(slot, -REFRESH_S) >= REFRESH_S:
        conn.set(KEY.format(digest), data, ex=max(ttl, MIN_TTL))
        _published[slot] = now
    return digest


def fetch(conn: Any, digest: str) -> bytes | None:
    """The published bytes for ``digest``, checked against it; ``None`` when absent (expired, never published)."""
    data = conn.get(KEY.format(digest))
    if data is None or hashlib.sha256(data).hexdigest() != digest:
        return None
    return bytes(data)
