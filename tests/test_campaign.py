"""Campaigns against real processes: one group, idempotent re-runs, manifests, and the ``zimg batch`` command."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from zimg_queue import campaign
from zimg_queue.queue import Producer
from zimg_queue.request import ValidationError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = """
[watermarks]
mark = "{mark}"

[presets.square]
prompt = "photo of {{title}}"
width = 64
height = 64
postprocess = {{ watermark = "mark", format = "jpeg" }}

[presets.wide]
prompt = "banner for {{title}}: {{tagline}}"
width = 128
height = 64
"""


@pytest.fixture
def presets(tmp_path: Path) -> Path:
    mark = tmp_path / "mark.png"
    mark.write_bytes((ROOT / "examples" / "daily_posters" / "brand.png").read_bytes())
    path = tmp_path / "presets.toml"
    path.write_text(PRESETS.format(mark=mark))
    return path


@pytest.fixture
def items(tmp_path: Path) -> Path:
    path = tmp_path / "items.csv"
    path.write_text("sku,title,tagline\nA-1,a hat,warm\nB/2,a scarf,soft\n")
    return path


def test_items_load_from_csv_jsonl_and_text(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "x", "prompt": "p", "width": 64}\n\n{"prompt": "q"}\n')
    (tmp_path / "a.txt").write_text("# comment\nfirst prompt\n\nsecond prompt\n")
    assert campaign.load_items(tmp_path / "a.jsonl")[0] == {"id": "x", "prompt": "p", "width": 64}
    assert campaign.load_items(tmp_path / "a.txt") == [{"prompt": "first prompt"}, {"prompt": "second prompt"}]


def test_job_ids_are_valid_readable_and_stable():
    assert campaign.job_id_for("daily", "A-1", "main") == "daily__A-1__main"
    odd = campaign.job_id_for("daily", "B/2 ü", "main")
    assert odd.startswith("daily__B_2-") and odd == campaign.job_id_for("daily", "B/2 ü", "main")
    assert len(campaign.job_id_for("d", "x" * 500, "p" * 64)) <= 128
    with pytest.raises(ValidationError):
        campaign.check_name("bad name")


def test_campaign_is_one_group_writes_a_manifest_and_reruns_idempotently(procs, producer: Producer, presets, items,
                                                                        redis_conn, tmp_path):  # fmt: skip
    procs.inference(latency_a="0", latency_b="0")
    procs.worker(zimg_presets=str(presets))
    producer.presets_path = str(presets)
    seen = []
    data = campaign.run(producer, "spring", items, ["square", "wide"], manifest_path=tmp_path / "m.csv",
                        timeout=60, on_progress=seen.append)  # fmt: skip
    assert data["counts"] == {"finished": 4} and data["run"]["enqueued"] == 4
    assert seen[-1]["complete"] and seen[-1]["done"] == 4
    members = {m.decode() for m in redis_conn.smembers("rq:group:spring")}
    assert members == {r["job_id"] for r in data["rows"]} and len(members) == 4
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert [(r["item"], r["preset"], r["status"]) for r in rows] == [
        ("A-1", "square", "finished"), ("A-1", "wide", "finished"),
        ("B/2", "square", "finished"), ("B/2", "wide", "finished"),
    ]  # fmt: skip
    assert all(Path(r["path"]).is_file() and not r["error"] for r in rows)
    assert rows[0]["path"].endswith(".jpg") and rows[1]["path"].endswith(".png")
    request = producer.fetch("spring__A-1__wide").args[0]
    assert request["prompt"] == "banner for a hat: warm"

    again = campaign.run(producer, "spring", items, ["square", "wide"], timeout=60)
    assert again["run"] == {"campaign": "spring", "jobs": 4, "enqueued": 0, "requeued": 0, "skipped": 4}
    assert [r["path"] for r in again["rows"]] == [r["path"] for r in rows]

    # An expired job is enqueued again, and its image comes from the store, not the GPU.
    Job.fetch("spring__A-1__square", connection=redis_conn).delete()
    third = campaign.run(producer, "spring", items, ["square", "wide"], timeout=60)
    assert third["run"]["enqueued"] == 1 and third["counts"] == {"finished": 4}
    assert producer.status("spring__A-1__square")["result"]["cache_hit"] is True


def test_failed_jobs_are_requeued_by_a_rerun(procs, producer: Producer, tmp_path):
    worker_down = tmp_path / "p.txt"
    worker_down.write_text("one\ntwo\n")
    procs.worker(zimg_max_retries="0", zimg_outage_budget="0")  # no inference server yet, no outage wait: both fail
    first = campaign.run(producer, "retry-me", worker_down, timeout=30)
    assert first["counts"] == {"failed": 2} and "could not be reached" in first["rows"][0]["error"]
    procs.inference(latency_a="0", latency_b="0")
    second = campaign.run(producer, "retry-me", worker_down, timeout=30)
    assert second["run"]["requeued"] == 2 and second["counts"] == {"finished": 2}


def test_every_invalid_item_is_named_by_file_line_key_and_preset_and_nothing_is_enqueued(
    producer: Producer, presets, tmp_path
):
    producer.presets_path = str(presets)
    bad = tmp_path / "bad.csv"
    bad.write_text("sku,title\nA,hat\nB,\nC,\n")
    with pytest.raises(ValidationError) as caught:
        campaign.Campaign(producer, "bad", campaign.load_items(bad), ["square"]).start()
    fields = [e["field"] for e in caught.value.errors]
    assert fields == [
        "bad.csv line 3 (B), preset square: placeholders.title",
        "bad.csv line 4 (C), preset square: placeholders.title",
    ]  # every bad item at once, not just the first
    assert producer.queue().count == 0


def test_plain_text_and_jsonl_items_are_named_by_line_and_every_bad_line_is_reported(producer: Producer, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my prompts\na lighthouse\n\na bowl of ramen\na lighthouse\n")
    with pytest.raises(ValidationError) as caught:
        campaign.Campaign(producer, "dup", campaign.load_items(prompts)).start()
    assert str(caught.value) == "prompts.txt line 5: has the same content as prompts.txt line 2: remove one"

    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text(
        '{"prompt": "ok"}\n{"prompt": \n[1]\n{"prompt": "x", "width": 100}\n{"prompt": "y", "height": 7}\n'
    )
    with pytest.raises(ValidationError) as caught:
        campaign.load_items(jsonl)
    assert [e["field"] for e in caught.value.errors] == ["items.jsonl line 2", "items.jsonl line 3"]
    jsonl.write_text('{"prompt": "ok"}\n{"prompt": "x", "width": 100}\n{"prompt": "y", "height": 7}\n')
    with pytest.raises(ValidationError) as caught:
        campaign.Campaign(producer, "j", campaign.load_items(jsonl)).start()
    assert [e["field"] for e in caught.value.errors] == ["items.jsonl line 2: width", "items.jsonl line 3: height"]
    assert producer.queue().count == 0


def test_the_progress_bar_draws_on_a_terminal_only():
    class Stream(io.StringIO):
        def __init__(self, tty: bool):
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    state = {"total": 4, "done": 2, "counts": {"finished": 2}, "complete": False}
    for tty, drawn in ((True, True), (False, False)):
        stream = Stream(tty)
        campaign.progress_bar(stream)(state)
        assert ("\r[" in stream.getvalue() and "2/4" in stream.getvalue()) is drawn
        assert bool(stream.getvalue()) is drawn


def test_readme_daily_posters_commands_work_with_workers_that_have_no_presets(procs, tmp_path):
    """The README's commands as written: ZIMG_PRESETS exported for `zimg batch` only; the workers never see it."""
    procs.inference(latency_a="0", latency_b="0")
    procs.worker(2)  # no ZIMG_PRESETS, no ZIMG_WATERMARK_DIR: the watermark must travel with the job
    env = {**procs.env(), "ZIMG_PRESETS": "examples/daily_posters/presets.toml"}
    args = ["batch", "examples/daily_posters/products.csv", "--campaign", "spring-drop", "--manifest"]
    out = subprocess.run([sys.executable, "-m", "zimg_queue.cli", *args, str(tmp_path / "posters.csv")], env=env,
                         capture_output=True, text=True, timeout=180, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    rows = list(csv.DictReader((tmp_path / "posters.csv").open()))
    assert len(rows) == 9 and {r["status"] for r in rows} == {"finished"}, rows
    assert {Path(r["path"]).suffix for r in rows} == {".jpg", ".webp"}
    brand = (ROOT / "examples" / "daily_posters" / "brand.png").read_bytes()
    job = Job.fetch("spring-drop__TS-001__main", connection=procs_conn(procs), serializer=JSONSerializer)
    assert job.args[1]["postprocess"]["watermark"]["sha256"] == hashlib.sha256(brand).hexdigest()
    assert "\r" not in out.stderr  # no progress bar in a pipe


def procs_conn(procs):
    import redis

    return redis.Redis.from_url(procs.settings.redis_url)


def test_zimg_batch_command_with_presets_and_without(procs, presets, items, tmp_path):
    procs.inference(latency_a="0", latency_b="0")
    procs.worker(zimg_presets=str(presets))
    env = procs.env()
    cmd = [sys.executable, "-m", "zimg_queue.cli", "batch"]
    args = [*cmd, str(items), "--presets", str(presets), "--campaign", "cli", "--manifest", str(tmp_path / "m.json")]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["counts"] == {"finished": 4} and manifest["total"] == 4
    assert "\r" not in out.stderr  # stderr is a pipe here: no progress bar, the summary says it all
    summary = out.stdout.splitlines()
    assert summary[0].split()[:3] == ["item", "preset", "status"]  # then one line per job, with its image path
    paths = [Path(line.split()[-1]) for line in summary[1:] if " finished " in line]
    assert len(paths) == 4 and all(p.is_file() for p in paths)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse at dusk\na bowl of ramen\n")
    out = subprocess.run([*cmd, str(prompts), "--format", "webp", "--manifest", str(tmp_path / "p.csv")],
                         env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 2 and all(r["status"] == "finished" and r["path"].endswith(".webp") for r in rows)
    assert rows[0]["job_id"].startswith("prompts__")
