"""The core path against real processes: producer -> Redis -> RQ worker -> inference server -> file."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from zimg_queue.queue import Producer


def test_happy_path_writes_a_real_image_and_a_complete_result(stack, producer: Producer):
    job_id = producer.enqueue("a cat on a windowsill", width=256, height=128, seed=7)
    status = producer.wait(job_id, timeout=30)
    assert status["status"] == "finished", status
    result = status["result"]
    path = Path(result["path"])
    assert path.is_file() and path.parent == Path(stack.settings.images_path).resolve()
    with Image.open(path) as image:
        assert image.size == (256, 128) and image.format == "PNG"
    data = path.read_bytes()
    assert result["bytes"] == len(data) and result["sha256"] == hashlib.sha256(data).hexdigest()
    assert (result["width"], result["height"], result["seed"], result["format"]) == (256, 128, 7, "png")
    assert result["backend"] == "sim" and result["cache_hit"] is False
    for key in ("queued_s", "inference_s", "total_s"):
        assert result["timings"][key] >= 0
    assert status["progress"] == {"stage": "done", "percent": 100}
    assert status["request"]["prompt"] == "a cat on a windowsill"
    assert status["started_at"] and status["ended_at"] and status["error"] is None


def test_progress_stages_are_recorded_while_the_job_runs(procs, producer: Producer, redis_conn):
    procs.inference(latency_a="1.2", latency_b="0")  # slow enough to watch
    procs.worker()
    job_id = producer.enqueue("slow", width=64, height=64, seed=1, num_inference_steps=4)
    seen = []
    from rq.job import Job

    job = producer.fetch(job_id)
    while True:
        job.refresh()  # meta and status from one read: the final progress is written with the result
        stage = job.meta.get("progress", {}).get("stage")
        if stage and (not seen or seen[-1] != stage):
            seen.append(stage)
        if stage == "done" or job.get_status(refresh=False) in ("finished", "failed"):
            break
    assert isinstance(job, Job)
    assert "waiting_for_inference" in seen or "inference" in seen
    assert "inference" in seen, f"per-step progress never showed: {seen}"
    assert seen[-1] == "done"


def test_same_request_twice_gives_the_same_file_from_the_cache(stack, producer: Producer):
    first = producer.wait(producer.enqueue("a red fox", width=128, height=128, seed=3), timeout=30)
    second = producer.wait(producer.enqueue("a red fox", width=128, height=128, seed=3), timeout=30)
    assert first["result"]["path"] == second["result"]["path"]
    assert first["result"]["sha256"] == second["result"]["sha256"]
    assert (first["result"]["cache_hit"], second["result"]["cache_hit"]) == (False, True)
    assert len(list(Path(stack.settings.images_path).iterdir())) == 1


def test_other_seed_gives_another_file(stack, producer: Producer):
    a = producer.wait(producer.enqueue("a red fox", width=64, height=64, seed=1), timeout=30)
    b = producer.wait(producer.enqueue("a red fox", width=64, height=64, seed=2), timeout=30)
    assert a["result"]["sha256"] != b["result"]["sha256"]


def test_jpeg_and_webp_are_written_in_their_format(stack, producer: Producer):
    for fmt, pil in (("jpeg", "JPEG"), ("webp", "WEBP")):
        status = producer.wait(producer.enqueue("a boat", width=128, height=64, output_format=fmt), timeout=30)
        assert status["status"] == "finished", status
        with Image.open(status["result"]["path"]) as image:
            assert image.format == pil and image.size == (128, 64)


def test_out_of_memory_fails_clearly_when_downscaling_is_off(procs, redis_conn, settings):
    """Changed settings: no downscaling (the default's is the next test) and no retries (the point is the message;
    retries on the shipped intervals are test_faults.py::test_5xx_is_retried_with_exponential_backoff_and_jitter)."""
    producer = Producer(redis_conn, settings.with_(max_retries=0))
    procs.inference(latency_a="0", latency_b="0", oom_pixels=str(64 * 64))
    procs.worker(zimg_oom_downscale="false")
    status = producer.wait(producer.enqueue("too big", width=256, height=256), timeout=30)
    assert status["status"] == "failed"
    assert "out of memory" in status["error"].lower()


def test_out_of_memory_retries_once_smaller_and_says_it_was_downscaled(procs, producer: Producer):
    procs.inference(latency_a="0", latency_b="0", oom_pixels=str(1024 * 768))
    procs.worker()
    status = producer.wait(producer.enqueue("big", width=1024, height=1024), timeout=30)
    assert status["status"] == "finished", status
    result = status["result"]
    assert result["downscaled"] == {"from": [1024, 1024], "to": [768, 768]}
    with Image.open(result["path"]) as image:
        assert image.size == (768, 768)


def test_the_one_call_api_reads_its_settings_from_the_environment(stack, monkeypatch):
    import zimg_queue

    for key, value in stack.env().items():
        if key.startswith("ZIMG_"):
            monkeypatch.setenv(key, value)
    zimg_queue.default_producer.cache_clear()
    try:
        job_id = zimg_queue.enqueue("a cat on a windowsill", width=64, height=64)
        status = zimg_queue.wait(job_id, timeout=30)
        assert status["status"] == "finished" and Path(status["result"]["path"]).is_file()
        assert zimg_queue.get_status(job_id)["result"] == status["result"]
    finally:
        zimg_queue.default_producer.cache_clear()
