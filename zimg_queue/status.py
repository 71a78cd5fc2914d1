"""A job as a plain JSON-able dict, and waiting for or cancelling it.

Statuses are RQ's own names (queued, started, finished, failed, canceled,
stopped, deferred, scheduled) so this API and rq-dashboard always agree.
Nothing here scans a registry or a whole queue: the cost of reading a job does
not grow with the queue (the position lookup is bounded by ``POSITION_LIMIT``).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from rq.command import send_stop_job_command
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import as_text

from .settings import PRIORITIES

FINAL = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED}
FINAL_NAMES = {s.value for s in FINAL}
#: Queue positions beyond this are reported as ``None`` rather than scanned for.
POSITION_LIMIT = 1000
#: A running job's worker renews its lease (and ``last_heartbeat``) every 3 s at most (``workers.lease``):
#: a ``started`` job silent for longer than this has lost its worker.
SILENT_WORKER_S = 10.0


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def now_iso() -> str:
    """The current UTC time as the API writes every timestamp: ``2026-11-25T09:00:00.123456Z``."""
    return _iso(datetime.now(timezone.utc))  # type: ignore[return-value]


def _error_line(exc_string: str | None) -> str | None:
    """The last line of a traceback: ``workers.errors.InferenceUnavailable: ...``."""
    if not exc_string:
        return None
    lines = [line for line in exc_string.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def queues_ahead(origin: str) -> list[str]:
    """The queues every worker drains before ``origin``: ``zimg-low`` -> ``zimg-high``, ``zimg-normal``."""
    prefix, _, priority = origin.rpartition("-")
    if priority not in PRIORITIES or not prefix:
        return []
    return [f"{prefix}-{p}" for p in PRIORITIES[: PRIORITIES.index(priority)]]


def queue_position(job: Job) -> int | None:
    """How many queued jobs will start before this one: every job in the higher-priority queues, plus those
    ahead of it in its own (workers drain high, then normal, then low).

    One round trip: an ``LLEN`` per higher queue and one bounded ``LPOS`` (O(POSITION_LIMIT) at worst);
    ``None`` when the job is not within the first ``POSITION_LIMIT`` of its queue.
    """
    with job.connection.pipeline(transaction=False) as pipe:
        for name in queues_ahead(job.origin):
            pipe.llen(f"rq:queue:{name}")
        pipe.execute_command("LPOS", f"rq:queue:{job.origin}", job.id, "MAXLEN", POSITION_LIMIT)
        *lengths, pos = pipe.execute()
    return sum(int(n) for n in lengths) + int(pos) if pos is not None else None


def job_status(job: Job, *, refresh: bool = False, latest: Result | None = None) -> dict[str, Any]:
    """Everything a client needs about one job, from two Redis reads.

    ``latest``: the job's newest result, already read (a waiter woken by the result stream holds it),
    which saves the second read for a finished job.
    """
    if refresh:
        job.refresh()
    state = job.get_status(refresh=False)
    status: str = state.value if hasattr(state, "value") else str(state)
    meta = job.meta or {}
    result = None
    error = None
    if status == JobStatus.FINISHED.value:
        if latest is not None and latest.type == Result.Type.SUCCESSFUL:
            result = latest.return_value
        else:
            result = job.return_value(refresh=True)
    elif status in (JobStatus.FAILED.value, JobStatus.STOPPED.value):
        latest = job.latest_result()
        exc = latest.exc_string if latest and latest.type != Result.Type.SUCCESSFUL else job._exc_info
        error = _error_line(exc) or ("stopped" if status == JobStatus.STOPPED.value else "failed")
        if "AbandonedJobError" in error:  # RQ's own line says only "Moved to FailedJobRegistry ..."
            died = [a["error"] for a in meta.get("attempts", []) if str(a.get("error", "")).startswith("WorkerDied")]
            error = died[-1] if died else "WorkerDied: the worker running this job died and no attempts were left"
    progress = dict(meta.get("progress") or {"stage": status, "percent": 0})
    if status == JobStatus.STARTED.value:
        progress = _worker_silence(job) or progress
    return {
        "id": job.id,
        "status": status,
        "queue": job.origin,
        "progress": progress,
        "position": queue_position(job) if status == JobStatus.QUEUED.value else None,
        "request": job.args[0] if job.args else None,
        "result": result,
        "error": error,
        "attempts": meta.get("attempts", []),
        "created_at": _iso(job.created_at),
        "enqueued_at": _iso(job.enqueued_at),
        "started_at": _iso(job.started_at),
        "ended_at": _iso(job.ended_at),
    }


def _worker_silence(job: Job) -> dict[str, Any] | None:
    """For a ``started`` job whose worker stopped renewing its lease: progress that says so (else ``None``).

    The job stays ``started`` in Redis until some worker's sweeper re-queues it; with no worker
    running at all, that is until one starts. Its status must not claim it is still running.
    """
    beat = job.last_heartbeat
    if beat is None:
        return None
    beat = beat if beat.tzinfo else beat.replace(tzinfo=timezone.utc)
    silent = (datetime.now(timezone.utc) - beat).total_seconds()
    if silent <= SILENT_WORKER_S:
        return None
    return {
        "stage": "worker_died",
        "percent": 0,
        "reason": "WorkerDied",
        "detail": f"the worker running this job stopped renewing its lease {silent:.0f} s ago (killed, out of "
        "memory or its machine went away); a running worker re-queues it (or fails it when no attempts are "
        "left) once the lease has expired",
    }


def wait_for(job: Job, timeout: float = 60.0, *, fresh: bool = False) -> dict[str, Any]:
    """Block until the job is final or ``timeout`` seconds pass, then return its status.

    Waits on RQ's result stream (``XREAD BLOCK``), so a finished job is seen the
    moment its worker writes the result, with no polling sleep. The job's hash is read
    in the same pipeline: Redis runs that read the moment the blocking one returns, so
    the wake-up brings the whole status, with no round trip after it. ``fresh`` says
    ``job`` was just fetched, saving one read.
    """
    deadline = time.monotonic() + max(0.0, timeout)
    latest: Result | None = None
    if not fresh:
        job.refresh()
    while True:
        if job.get_status(refresh=False) in FINAL:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if latest is not None:
            # The stream answered at once yet the job is not final: an older attempt's result. Do not spin.
            time.sleep(min(0.05, remaining))
        # Block on the result stream in slices, so a cancel (which writes no result) is still noticed.
        # The worker writes the result and the final status in one transaction, so the hash read right
        # after a result woke this read is normally final already.
        latest = _wait_and_read(job, max(1, int(min(remaining, 2.0))))
    return job_status(job, latest=latest)


def _wait_and_read(job: Job, block_s: int) -> Result | None:
    """The job's newest result (waiting up to ``block_s`` for one), and ``job`` refreshed, in one round trip."""
    with job.connection.pipeline(transaction=False) as pipe:
        pipe.xread({Result.get_key(job.id): "0-0"}, block=block_s * 1000)
        pipe.hgetall(job.key)
        streams, fields = pipe.execute()
    if not fields:
        raise NoSuchJobError(f"No such job: {job.key!r}")
    job.restore(fields)
    if not streams:
        return None
    result_id, payload = streams[0][1][-1]  # the stream's newest entry, as RQ's Result.fetch_latest takes it
    return Result.restore(job.id, as_text(result_id), payload, connection=job.connection, serializer=job.serializer)


def wait_status(job: Job, timeout: float = 60.0, *, fresh: bool = False) -> dict[str, Any]:
    """:func:`wait_for`, saying whether the wait ran out: ``timed_out`` is true when the job is not final yet.

    Never raises for a timeout: callers (the API's ``?wait=N``, a progress loop) often just wait again.
    """
    status = wait_for(job, timeout, fresh=fresh)
    status["timed_out"] = status["status"] not in FINAL_NAMES
    return status


def cancel(job: Job) -> dict[str, Any]:
    """Cancel a job: a queued (or scheduled, deferred) job never runs; a started one is stopped."""
    status = job.get_status(refresh=True)
    if status == JobStatus.STARTED:
        job.meta["cancel_requested"] = True
        job.save_meta()
        send_stop_job_command(job.connection, job.id, serializer=job.serializer)
    elif status not in FINAL:
        job.cancel()
    return job_status(job, refresh=True)
