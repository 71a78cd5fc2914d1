"""Scheduled campaigns: RQ's CronScheduler in a real ``zimg cron`` process, JSON jobs, a manifest at the end."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import wait_until
from rq.job import Job
from rq.serializers import JSONSerializer

from zimg_queue import campaign
from zimg_queue.presets import PresetError
from zimg_queue.schedules import build_scheduler, has_schedules, load_schedules

PRESETS = """
[presets.square]
prompt = "photo of {{title}}"
width = 64
height = 64

[schedules.nightly]
{when}
items = "items.csv"
presets = ["square"]
manifest_dir = "manifests"
"""


def write(tmp_path: Path, when: str = 'cron = "0 6 * * *"') -> Path:
    (tmp_path / "items.csv").write_text("sku,title\nA,a hat\nB,a scarf\n")
    path = tmp_path / "presets.toml"
    path.write_text(PRESETS.format(when=when))
    return path


def test_schedules_load_and_name_a_campaign_per_day(tmp_path):
    (s,) = load_schedules(str(write(tmp_path)))
    assert (s.name, s.cron, s.presets, s.items) == ("nightly", "0 6 * * *", ("square",), tmp_path / "items.csv")
    assert s.campaign_name().startswith("nightly-20")
    assert has_schedules(str(tmp_path / "presets.toml"))


@pytest.mark.parametrize(
    "when, message",
    [('cron = "every day"', "not a cron"), ('cron = "* * * * *"\ninterval = 5', "exactly one"), ("", "exactly one")],
)
def test_bad_schedules_are_rejected(tmp_path, when, message):
    with pytest.raises(PresetError, match=message):
        load_schedules(str(write(tmp_path, when)))


def test_scheduler_enqueues_json_jobs_on_the_schedules_queue(tmp_path, settings, redis_conn):
    scheduler = build_scheduler(settings, str(write(tmp_path, "interval = 3600")))
    assert scheduler is not None and len(scheduler.get_jobs()) == 1
    assert [j.name for j in scheduler.enqueue_jobs()] == ["zimg-schedule-nightly"]
    raw = redis_conn.lrange("rq:queue:zimg-normal", 0, -1)
    assert len(raw) == 1
    job = Job.fetch(raw[0].decode(), connection=redis_conn, serializer=JSONSerializer)  # JSON, never pickle
    assert job.func_name == "zimg_queue.schedules.run_schedule" and job.args[0] == "nightly"


def test_zimg_cron_process_runs_the_campaign_and_writes_its_manifest(procs, producer, tmp_path, redis_conn):
    presets = write(tmp_path, "interval = 3600")  # an interval job runs at once when the scheduler starts
    procs.inference(latency_a="0", latency_b="0")
    procs.worker(zimg_presets=str(presets))
    procs.zimg("cron", "cron", env={"ZIMG_PRESETS": str(presets)})
    manifest_dir = tmp_path / "manifests"
    found = wait_until(lambda: list(manifest_dir.glob("nightly-*.csv")), timeout=60, interval=0.2)
    rows = list(csv.DictReader(found[0].open()))
    assert [(r["item"], r["preset"], r["status"]) for r in rows] == [("A", "square", "finished"),
                                                                     ("B", "square", "finished")]  # fmt: skip
    name = found[0].stem
    assert campaign.progress(redis_conn, name)["complete"]
