"""Idempotency keys: the same key with the same request returns the same job; with another, a clear error.

A job id given by the caller (``job_id=`` in Python, ``idempotency_key`` over HTTP) makes
enqueueing idempotent through RQ's unique jobs. A retry after a timeout must get the
original job back; a *different* request under a key already used is a client bug that
must not be answered with the old job as if all were well. So each keyed job stores a
fingerprint of what was asked (the validated request, its options and priority; the seed
only when the caller chose it, since an omitted seed is drawn per call), and a duplicate
is compared against it: :class:`IdempotencyConflict` (HTTP 409 with the existing job's
id, the IETF Idempotency-Key draft's convention) when they differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from .request import ValidationError

META_KEY = "fingerprint"


class IdempotencyConflict(ValidationError):
    """``job_id`` names an existing job made from a different request. ``job_id`` is that job's id."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(
            [
                {
                    "field": "job_id",
                    "message": f"job {job_id!r} already exists for a different request; use a new key, "
                    "or send the same request to get that job back",
                }
            ]
        )


def fingerprint(request: dict[str, Any], options: dict[str, Any], priority: str) -> str:
    """A digest of what a keyed job was asked to do, seed left out (compared separately)."""
    asked = {"request": {k: v for k, v in request.items() if k != "seed"}, "options": options, "priority": priority}
    blob = json.dumps(asked, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def check_same(connection: redis.Redis, job_id: str, digest: str, seed: int | None) -> None:
    """Raise :class:`IdempotencyConflict` unless the existing job ``job_id`` was asked the same (and ``seed``)."""
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
        stored = (job.meta or {}).get(META_KEY)
        request = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
    except NoSuchJobError:
        return  # expired between the two calls: nothing to contradict
    except DeserializationError:
        raise IdempotencyConflict(job_id) from None  # not even one of ours
    if stored is not None and stored != digest:
        raise IdempotencyConflict(job_id)
    if seed is not None and request.get("seed") != seed:
        raise IdempotencyConflict(job_id)
