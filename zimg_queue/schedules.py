"""Scheduled campaigns on RQ's own ``CronScheduler`` (``zimg cron``).

Schedules live in the presets file, beside the presets they use::

    [schedules.daily]
    cron = "0 6 * * *"          # or: interval = 3600  (seconds)
    items = "products.csv"      # relative to the presets file
    presets = ["main", "detail", "social"]
    manifest_dir = "manifests"  # optional: <dir>/<campaign>.csv when the run is done
    priority = "low"            # optional

At each tick the scheduler enqueues one small job, :func:`run_schedule`, which a
worker runs: it starts the campaign ``<schedule>-<YYYYMMDD>`` (``<schedule>-<n>`` for
interval schedules). Campaign job ids are idempotent, so two ``zimg cron`` processes,
or a restart in the middle of a day, never make a poster twice. The manifest is
written by :func:`finish`, a job that re-schedules itself every ``FINISH_POLL_S``
until the campaign is complete: no worker ever blocks waiting for other jobs.

RQ's ``CronJob`` enqueues with the default (pickle) serializer; :class:`JsonCronJob`
enqueues with JSON like every other job here, so workers never unpickle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from croniter import croniter
from rq import cron_job_registry
from rq.cron import CronJob, CronScheduler
from rq.defaults import DEFAULT_CRON_JOB_HISTORY_LIMIT, DEFAULT_CRON_JOB_HISTORY_TTL
from rq.job import Job
from rq.serializers import JSONSerializer

from .claims import ClaimingQueue
from .presets import PresetError, PresetFile, load_presets
from .settings import PRIORITIES, Settings

log = logging.getLogger(__name__)
FINISH_POLL_S = 5


@dataclass(frozen=True)
class Schedule:
    name: str
    items: Path
    presets: tuple[str, ...]
    cron: str | None = None
    interval: int | None = None
    manifest_dir: Path | None = None
    priority: str = "normal"

    def campaign_name(self, at: datetime | None = None) -> str:
        at = at or datetime.now(timezone.utc)
        if self.interval:
            return f"{self.name}-{int(at.timestamp()) // self.interval}"
        return f"{self.name}-{at:%Y%m%d}"


def _schedule(name: str, table: Mapping[str, Any], pf: PresetFile) -> Schedule:
    where = f"schedules.{name}"
    unknown = set(table) - {"cron", "interval", "items", "presets", "manifest_dir", "priority"}
    if unknown:
        raise PresetError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    cron, interval = table.get("cron"), table.get("interval")
    if (cron is None) == (interval is None):
        raise PresetError(f"{where}: set exactly one of cron or interval")
    if cron is not None and (not isinstance(cron, str) or not croniter.is_valid(cron)):
        raise PresetError(f"{where}.cron: not a cron expression: {cron!r}")
    if interval is not None and (not isinstance(interval, int) or interval < 1):
        raise PresetError(f"{where}.interval: must be a positive number of seconds")
    if not isinstance(table.get("items"), str):
        raise PresetError(f"{where}.items: must name a CSV/JSONL file")
    presets = table.get("presets") or sorted(pf.presets)
    for preset in presets:
        if preset not in pf.presets:
            raise PresetError(f"{where}.presets: no preset named {preset!r}")
    priority = table.get("priority", "normal")
    if priority not in PRIORITIES:
        raise PresetError(f"{where}.priority: must be one of {', '.join(PRIORITIES)}")
    manifest_dir = pf.resolve(table["manifest_dir"]) if table.get("manifest_dir") else None
    return Schedule(name, pf.resolve(table["items"]), tuple(presets), cron, interval, manifest_dir, priority)


def load_schedules(presets: str | None = None) -> list[Schedule]:
    """The ``[schedules.*]`` of the presets file (``$ZIMG_PRESETS`` by default); empty when none."""
    pf = load_presets(presets)
    return [_schedule(name, table, pf) for name, table in pf.schedules.items()]


def _producer(presets: str | None):
    from .queue import Producer

    settings = Settings.from_env()
    producer = Producer(settings=settings.with_default_redis())
    producer.presets_path = presets
    return producer


def run_schedule(name: str, presets: str | None = None) -> dict[str, Any]:
    """The job the scheduler enqueues: start today's campaign, then hand the manifest to :func:`finish`."""
    from .campaign import Campaign, load_items

    schedule = {s.name: s for s in load_schedules(presets)}[name]
    producer = _producer(presets)
    campaign = schedule.campaign_name()
    started = Campaign(producer, campaign, load_items(schedule.items), schedule.presets, priority=schedule.priority)
    result = started.start()
    if schedule.manifest_dir is not None:
        manifest = str(schedule.manifest_dir / f"{campaign}.csv")
        producer.queue("high").enqueue_in(
            timedelta(seconds=FINISH_POLL_S), "zimg_queue.schedules.finish", campaign, manifest, time.time()
        )
        result["manifest"] = manifest
    return result


def finish(campaign: str, manifest_path: str, since: float, give_up_s: float = 86_400) -> dict[str, Any]:
    """Write the manifest once every job is final; otherwise check again in ``FINISH_POLL_S`` seconds."""
    from .campaign import manifest, progress, write_manifest

    producer = _producer(None)
    state = progress(producer.connection, campaign)
    if state["complete"] or time.time() - since > give_up_s:
        write_manifest(manifest(producer.connection, campaign), manifest_path)
        return {**state, "manifest": manifest_path}
    producer.queue("high").enqueue_in(
        timedelta(seconds=FINISH_POLL_S), "zimg_queue.schedules.finish", campaign, manifest_path, since
    )
    return {**state, "manifest": None}


class JsonCronJob(CronJob):
    """RQ's ``CronJob``, enqueuing with the JSON serializer like every other producer here."""

    def enqueue(self, connection: Any) -> Job:
        """``CronJob.enqueue`` (rq 2.12) with a JSON queue: enqueue and record history in one round trip."""
        assert self.func is not None
        queue = ClaimingQueue(self.queue_name, connection=connection, serializer=JSONSerializer)
        with connection.pipeline() as pipe:
            job = queue.enqueue(self.func, *self.args, **self.kwargs, **self.job_options, pipeline=pipe)
            stamp = job.enqueued_at.timestamp() if job.enqueued_at else time.time()
            pipe.zadd(self.job_history_key, {job.id: stamp})
            pipe.zremrangebyrank(self.job_history_key, 0, -(DEFAULT_CRON_JOB_HISTORY_LIMIT + 1))
            pipe.expire(self.job_history_key, DEFAULT_CRON_JOB_HISTORY_TTL)
            cron_job_registry.add(self.name, pipe, enqueue_timestamp=stamp)
            pipe.execute()
        log.info("enqueued %s on %s", self.name, self.queue_name)
        return job


def build_scheduler(settings: Settings, presets: str | None = None) -> CronScheduler | None:
    """A ``CronScheduler`` with one job per schedule; ``None`` when the file has no schedules."""
    from .connection import connect

    schedules = load_schedules(presets)
    if not schedules:
        return None
    assert settings.redis_url, "resolve the Redis URL first"
    scheduler = CronScheduler(connect(settings.redis_url), name=f"zimg-cron-{int(time.time())}")
    path = str(Path(presets).resolve()) if presets else None
    for s in schedules:
        job = JsonCronJob(
            queue_name=settings.queue_name(s.priority),
            func=run_schedule,
            args=(s.name, path),
            cron=s.cron,
            interval=s.interval,
            job_timeout=300,
            name=f"zimg-schedule-{s.name}",
        )
        scheduler._cron_jobs.append(job)  # what CronScheduler.register does, with our job class
        log.info("schedule %s: %s", s.name, s.cron or f"every {s.interval} s")
    return scheduler


def has_schedules(presets: str | None = None) -> bool:
    """True when the presets file configures at least one schedule (``zimg up`` starts ``zimg cron`` then)."""
    try:
        return bool(load_presets(presets).schedules)
    except PresetError:
        return False


def run_cron(settings: Settings, presets: str | None = None, *, idle: bool = False) -> int:
    """``zimg cron``: run the scheduler until SIGTERM/SIGINT.

    With no schedules it exits at once, or with ``idle`` sleeps until stopped: a Procfile
    runner (honcho, foreman) stops every process when one exits.
    """
    scheduler = build_scheduler(settings, presets)
    if scheduler is None:
        print("no [schedules] in the presets file (set ZIMG_PRESETS or --presets); nothing to do", flush=True)
        if idle:
            import signal

            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(0)))
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0
    scheduler.start()
    return 0
