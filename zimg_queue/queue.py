"""The producer: validate a request and put a generate job on an RQ queue.

Jobs carry only the small request dict (never image bytes), use RQ's JSON
serializer (a payload from Redis can never run code, unlike pickle), and have an
explicit timeout, result TTL, failure TTL and ``Retry`` policy.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from .connection import shared
from .request import GenerateRequest, ValidationError
from .settings import PRIORITIES, Settings

#: The job function, named by string so producers never import worker code.
JOB_FUNC = "workers.job.generate"
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

RequestLike = GenerateRequest | Mapping[str, Any] | str


def check_job_id(job_id: str, field: str = "job_id") -> str:
    """RQ job ids are Redis key parts: only ``[A-Za-z0-9_-]``, at most 128 characters."""
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise ValidationError.single(field, "must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'")
    return job_id


def jittered(intervals: Iterable[float], rng: random.Random | None = None) -> list[float]:
    """Exponential retry intervals with +-25 % jitter, so retrying jobs do not stampede a recovering server."""
    rng = rng or random
    return [round(i * rng.uniform(0.75, 1.25), 2) for i in intervals]


class Producer:
    """Enqueues generate jobs and reads them back. One per process is enough; it is thread-safe."""

    def __init__(self, connection: redis.Redis | None = None, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        if connection is None:
            if not self.settings.redis_url:
                raise RuntimeError("set ZIMG_REDIS_URL (or pass a redis connection)")
            connection = shared(self.settings.redis_url)
        self.connection = connection
        self.serializer = JSONSerializer
        self._queues = {p: self.queue(p) for p in PRIORITIES}

    def queue(self, priority: str = "normal") -> Queue:
        name = self.settings.queue_name(priority)
        return Queue(name, connection=self.connection, serializer=self.serializer)

    def validate(self, request: RequestLike, **fields: Any) -> GenerateRequest:
        """A :class:`GenerateRequest` from a prompt string, a dict or a request, plus field overrides."""
        if isinstance(request, GenerateRequest):
            data: dict[str, Any] = request.to_dict()
        elif isinstance(request, str):
            data = {"prompt": request}
        else:
            data = dict(request)
        data.update(fields)
        return GenerateRequest.from_dict(data, max_pixels=self.settings.max_pixels)

    def _job_options(self, request: GenerateRequest, job_id: str | None, meta: Mapping | None) -> dict:
        s = self.settings
        retry = Retry(max=s.max_retries, interval=jittered(s.retry_intervals)) if s.max_retries > 0 else None
        return {
            "args": (request.to_dict(),),
            "job_id": job_id,
            "timeout": s.job_timeout,
            "result_ttl": s.result_ttl,
            "failure_ttl": s.failure_ttl,
            "retry": retry,
            "description": f"generate {request.width}x{request.height} seed={request.seed}: {request.prompt[:80]}",
            "meta": {"progress": {"stage": "queued", "percent": 0}, **(meta or {})},
        }

    def enqueue(
        self,
        request: RequestLike,
        *,
        job_id: str | None = None,
        priority: str = "normal",
        meta: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        """Validate and enqueue one request; return its job id.

        ``job_id`` makes the call idempotent: a job with that id is never enqueued
        twice (RQ's unique jobs); the existing id is returned instead.
        Raises :class:`ValidationError` and enqueues nothing when the request is bad.
        """
        req = self.validate(request, **fields)
        queue = self._queue_for(priority)
        if job_id is not None:
            check_job_id(job_id)
        opts = self._job_options(req, job_id, meta)
        try:
            job = queue.enqueue_call(JOB_FUNC, unique=job_id is not None, **opts)
        except DuplicateJobError:
            return job_id  # type: ignore[return-value]
        return job.id

    def enqueue_many(
        self,
        requests: Iterable[RequestLike],
        *,
        priority: str = "normal",
        job_ids: Iterable[str | None] | None = None,
        group_id: str | None = None,
    ) -> list[str]:
        """Validate every request first, then enqueue all of them in one Redis round trip.

        If any request is invalid nothing is enqueued; the error names the item's index.
        Items whose ``job_ids`` entry already exists are skipped (idempotent re-runs).
        """
        reqs: list[GenerateRequest] = []
        for i, item in enumerate(requests):
            try:
                reqs.append(self.validate(item))
            except ValidationError as exc:
                raise ValidationError([{**e, "field": f"[{i}].{e['field']}"} for e in exc.errors]) from None
        ids = list(job_ids) if job_ids is not None else [None] * len(reqs)
        if len(ids) != len(reqs):
            raise ValueError("job_ids must have one entry per request")
        for job_id in ids:
            if job_id is not None:
                check_job_id(job_id)
        existing = self._existing(ids)
        queue = self._queue_for(priority)
        datas = [
            Queue.prepare_data(JOB_FUNC, **self._job_options(req, job_id, None))
            for req, job_id in zip(reqs, ids)
            if job_id is None or job_id not in existing
        ]
        with self.connection.pipeline() as pipe:
            jobs = queue.enqueue_many(datas, pipeline=pipe, group_id=group_id) if datas else []
            pipe.execute()
        made = iter(job.id for job in jobs)
        return [job_id if job_id in existing else next(made) for job_id in ids]

    def _existing(self, ids: list[str | None]) -> set[str]:
        wanted = [i for i in ids if i is not None]
        if not wanted:
            return set()
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in wanted:
                pipe.exists(Job.key_for(job_id))
            return {job_id for job_id, found in zip(wanted, pipe.execute()) if found}

    def _queue_for(self, priority: str) -> Queue:
        if priority not in self._queues:
            raise ValidationError.single("priority", f"must be one of {', '.join(PRIORITIES)} (got {priority!r})")
        return self._queues[priority]

    def fetch(self, job_id: str) -> Job:
        """The RQ job, or :class:`rq.exceptions.NoSuchJobError`."""
        check_job_id(job_id, "id")
        return Job.fetch(job_id, connection=self.connection, serializer=self.serializer)

    # Reading, waiting and cancelling live in status.py; these keep the producer the one entry point.
    def status(self, job_id: str) -> dict[str, Any]:
        from .status import job_status

        return job_status(self.fetch(job_id))

    def wait(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        from .status import wait_for

        return wait_for(self.fetch(job_id), timeout)

    def cancel(self, job_id: str) -> dict[str, Any]:
        from .status import cancel

        return cancel(self.fetch(job_id))
