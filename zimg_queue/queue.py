"""The producer: validate a request and put a generate job on an RQ queue.

Jobs carry only the small request dict (never image bytes), use RQ's JSON
serializer (a payload from Redis can never run code, unlike pickle), and have an
explicit timeout, result TTL, failure TTL and ``Retry`` policy.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import redis
from rq import Callback, Queue, Retry
from rq.exceptions import DuplicateJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from .claims import ClaimingQueue
from .connection import shared
from .idempotency import META_KEY as IDEMPOTENCY_META
from .idempotency import check_same, fingerprint
from .options import JobOptions
from .request import GenerateRequest, ValidationError
from .settings import PRIORITIES, Settings

#: The job function, named by string so producers never import worker code.
JOB_FUNC = "workers.job.generate"
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")  # \Z: Python's $ also matches before a final "\n"

RequestLike = GenerateRequest | Mapping[str, Any] | str
OptionsLike = JobOptions | Mapping[str, Any]
#: Run by the worker when a job ends: metrics, and the signed webhook when the job asked for one.
ON_SUCCESS = "workers.webhooks.job_finished"
ON_FAILURE = "workers.webhooks.job_failed"


def check_job_id(job_id: str, field: str = "job_id") -> str:
    """RQ job ids are Redis key parts: only ``[A-Za-z0-9_-]``, at most 128 characters."""
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise ValidationError.single(field, "must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'")
    return job_id


def jittered(intervals: Iterable[float], rng: random.Random | None = None) -> list[float]:
    """Exponential retry intervals with +-25 % jitter, so retrying jobs do not stampede a recovering server."""
    source = cast(random.Random, rng or random)  # the module's functions are a shared Random's methods
    return [round(i * source.uniform(0.75, 1.25), 2) for i in intervals]


class Producer:
    """Enqueues generate jobs and reads them back. One per process is enough; it is thread-safe."""

    def __init__(self, connection: redis.Redis | None = None, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        if connection is None:  # the same choice as every other entry point (zimg_queue.connection)
            self.settings = self.settings.with_default_redis()
            connection = shared(self.settings.redis_url or "")
        self.connection = connection
        self.serializer = JSONSerializer
        #: The presets file for ``options={"preset": ...}``: the settings' (environment, ``.env`` or a Flask
        #: app's config); ``None``: no presets.
        self.presets_path: str | None = self.settings.presets
        self._queues = {p: self.queue(p) for p in PRIORITIES}

    def queue(self, priority: str = "normal") -> Queue:
        name = self.settings.queue_name(priority)
        return ClaimingQueue(name, connection=self.connection, serializer=self.serializer)

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

    def prepare(
        self, request: RequestLike | None, options: OptionsLike | None = None, **fields: Any
    ) -> tuple[GenerateRequest, JobOptions]:
        """Validate options, expand a named preset into the request, then validate the request.

        With ``options={"preset": "main", "placeholders": {...}}`` the request may be ``None``
        or hold only overrides (``{"seed": 7}``); the preset's post-processing is the default
        for the job's own.
        """
        opts = JobOptions.from_dict(options)
        if opts.preset:
            from .presets import load_presets

            preset = load_presets(self.presets_path).get(opts.preset)
            base = {} if request is None else self._as_dict(request)
            data = preset.render(opts.placeholders, overrides={**base, **fields})
            post = preset.postprocess.merged(opts.postprocess) if preset.postprocess else opts.postprocess
            opts = replace(opts, postprocess=post)
            req = GenerateRequest.from_dict(data, max_pixels=self.settings.max_pixels)
        else:
            if opts.placeholders:
                raise ValidationError.single("options.placeholders", "need options.preset")
            if request is None:
                raise ValidationError.single("prompt", "is required")
            req = self.validate(request, **fields)
        if opts.postprocess is not None and opts.postprocess.watermark is not None:
            opts = self._watermark_by_content(opts)
        if opts.webhook_url:  # no loopback/private targets unless allowed (the worker checks again after DNS)
            from .webhook_targets import check_url

            check_url(opts.webhook_url, allow_private=self.settings.webhook_allow_private)
        return req, opts

    def _watermark_by_content(self, opts: JobOptions) -> JobOptions:
        """Resolve the watermark here and send it by content, so no worker needs this producer's configuration.

        The bytes go to Redis under their SHA-256 (:mod:`zimg_queue.watermarks`) and the job carries the
        digest. With no watermarks configured here, the name alone goes (the workers resolve it) and a
        digest a client sent is dropped.
        """
        from . import watermarks
        from .options import resolve_watermark, watermark_sources

        assert opts.postprocess is not None and opts.postprocess.watermark is not None
        post, mark = opts.postprocess, opts.postprocess.watermark
        table, folder = watermark_sources(self.presets_path, self.settings)  # app.config's too, not just the env's
        digest = None
        if table or folder:  # configured here: fail now, not on the worker
            path = resolve_watermark(mark.name, self.presets_path, self.settings)
            ttl = max(self.settings.result_ttl, self.settings.failure_ttl) + self.settings.job_timeout
            try:
                digest = watermarks.publish(self.connection, path, ttl)
            except ValueError as exc:
                raise ValidationError.single("options.postprocess.watermark", str(exc)) from None
        return replace(opts, postprocess=replace(post, watermark=replace(mark, sha256=digest)))

    @staticmethod
    def _as_dict(request: RequestLike) -> dict[str, Any]:
        if isinstance(request, GenerateRequest):
            return request.to_dict()
        return {"prompt": request} if isinstance(request, str) else dict(request)

    def _job_options(
        self, request: GenerateRequest, job_id: str | None, meta: Mapping | None, options: JobOptions | None = None
    ) -> dict:
        s = self.settings
        intervals = cast("list[int]", jittered(s.retry_intervals))  # rq annotates int; it waits fractional seconds too
        retry = Retry(max=s.max_retries, interval=intervals) if s.max_retries > 0 else None
        extra = options.to_dict() if options is not None else {}
        return {
            "args": (request.to_dict(), extra) if extra else (request.to_dict(),),
            "on_success": Callback(ON_SUCCESS),
            "on_failure": Callback(ON_FAILURE),
            "job_id": job_id,
            "timeout": s.job_timeout,
            "result_ttl": s.result_ttl,
            "failure_ttl": s.failure_ttl,
            "retry": retry,
            "description": f"generate {request.width}x{request.height} seed={request.seed}: {request.prompt[:80]}",
            "meta": {"progress": {"stage": "queued", "percent": 0}, **(meta or {})},
        }

    def _count_enqueued(self, queue: Queue, n: int, pipe: Any = None) -> None:
        from .metrics import record_enqueued

        record_enqueued(pipe if pipe is not None else self.connection, queue.name, n)

    def enqueue(
        self,
        request: RequestLike | None,
        *,
        job_id: str | None = None,
        priority: str = "normal",
        meta: Mapping[str, Any] | None = None,
        options: OptionsLike | None = None,
        **fields: Any,
    ) -> str:
        """Validate and enqueue one request; return its job id.

        ``job_id`` makes the call idempotent: a job with that id is never enqueued
        twice (RQ's unique jobs); the existing id is returned instead.
        Raises :class:`ValidationError` and enqueues nothing when the request is bad.
        """
        req, job_opts = self.prepare(request, options, **fields)
        seed_given = (
            isinstance(request, GenerateRequest)
            or fields.get("seed") is not None
            or (isinstance(request, Mapping) and request.get("seed") is not None)
        )
        return self.enqueue_prepared(req, job_opts, job_id=job_id, priority=priority, meta=meta, seed_given=seed_given)

    def enqueue_prepared(
        self,
        req: GenerateRequest,
        job_opts: JobOptions,
        *,
        job_id: str | None = None,
        priority: str = "normal",
        meta: Mapping[str, Any] | None = None,
        seed_given: bool = True,
    ) -> str:
        """Enqueue what :meth:`prepare` returned, without validating it again (the web API's path).

        With ``job_id``, an existing job of that id asked for something else raises
        :class:`~zimg_queue.idempotency.IdempotencyConflict` (``seed_given``: the caller chose the seed).
        """
        queue = self._queue_for(priority)
        digest = None
        if job_id is not None:
            check_job_id(job_id)
            digest = fingerprint(req.to_dict(), job_opts.to_dict(), priority)
            meta = {**(meta or {}), IDEMPOTENCY_META: digest}
        opts = self._job_options(req, job_id, meta, job_opts)
        if job_id is None:
            # One MULTI/EXEC for the job and its metrics counter: the common case pays one round trip.
            with self.connection.pipeline() as pipe:
                job = queue.enqueue_call(JOB_FUNC, pipeline=pipe, **opts)
                self._count_enqueued(queue, 1, pipe)
                pipe.execute()
            return job.id
        try:  # unique jobs check and save atomically in a script of their own
            job = queue.enqueue_call(JOB_FUNC, unique=True, **opts)
        except DuplicateJobError:
            check_same(self.connection, job_id, digest or "", req.seed if seed_given else None)
            return job_id
        self._count_enqueued(queue, 1)
        return job.id

    def enqueue_many(
        self,
        requests: Iterable[RequestLike],
        *,
        priority: str = "normal",
        job_ids: Iterable[str | None] | None = None,
        group_id: str | None = None,
        options: OptionsLike | Sequence[OptionsLike | None] | None = None,
    ) -> list[str]:
        """Validate every request first, then enqueue all of them in one Redis round trip.

        If any request is invalid nothing is enqueued; the error names the item's index.
        Items whose ``job_ids`` entry already exists are skipped (idempotent re-runs).
        ``options`` is one :class:`JobOptions` for all, or a list with one per request.
        ``group_id`` makes the jobs one RQ group (``rq.group.Group``), readable as a whole later.
        """
        items = list(requests)
        per_item: list[OptionsLike | None] = (
            list(options) if isinstance(options, (list, tuple)) else [cast("OptionsLike | None", options)] * len(items)
        )
        if len(per_item) != len(items):
            raise ValueError("options must be one mapping or have one entry per request")
        reqs: list[GenerateRequest] = []
        job_opts: list[JobOptions] = []
        errors: list[dict[str, str]] = []
        for i, (item, opt) in enumerate(zip(items, per_item)):
            try:
                req, jo = self.prepare(item, opt)
            except ValidationError as exc:  # keep going: every bad item is reported at once
                errors.extend({**e, "field": f"[{i}].{e['field']}"} for e in exc.errors)
                continue
            reqs.append(req)
            job_opts.append(jo)
        if errors:
            raise ValidationError(errors)
        ids: list[str | None] = list(job_ids) if job_ids is not None else [None] * len(reqs)
        if len(ids) != len(reqs):
            raise ValueError("job_ids must have one entry per request")
        for job_id in ids:
            if job_id is not None:
                check_job_id(job_id)
        existing = self._existing(ids)
        queue = self._queue_for(priority)
        datas = [
            Queue.prepare_data(JOB_FUNC, **self._job_options(req, job_id, None, jo))
            for req, job_id, jo in zip(reqs, ids, job_opts)
            if job_id is None or job_id not in existing
        ]
        with self.connection.pipeline() as pipe:
            if datas and group_id:
                from rq.group import Group

                jobs = Group(self.connection, check_job_id(group_id, "group_id")).enqueue_many(queue, datas, pipe)
            else:
                jobs = queue.enqueue_many(datas, pipeline=pipe) if datas else []
            if jobs:
                self._count_enqueued(queue, len(jobs), pipe)
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
        """The status once final, or when ``timeout`` runs out: then ``status["timed_out"]`` is true."""
        from .status import wait_status

        return wait_status(self.fetch(job_id), timeout, fresh=True)

    def cancel(self, job_id: str) -> dict[str, Any]:
        from .status import cancel

        return cancel(self.fetch(job_id))
