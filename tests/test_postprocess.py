"""Post-processing: watermark placement and opacity, format conversion, thumbnails, deterministic names."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from workers.postprocess import apply, place
from workers.storage import ImageStore
from zimg_queue.options import Postprocess
from zimg_queue.queue import Producer

KEY = "ab" * 32


@pytest.fixture
def marks(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "marks"
    folder.mkdir()
    Image.new("RGBA", (40, 20), (255, 255, 255, 255)).save(folder / "white.png")
    monkeypatch.setenv("ZIMG_WATERMARK_DIR", str(folder))
    monkeypatch.delenv("ZIMG_PRESETS", raising=False)
    return folder


@pytest.fixture
def marked(producer: Producer, marks: Path) -> Producer:
    """A producer whose own settings name the watermark folder (as a Flask app's config or the environment would).

    The producer reads the folder from the settings it was built with, not from the environment at enqueue time.
    """
    return Producer(producer.connection, producer.settings.with_(watermark_dir=str(marks)))


def black(w=400, h=200) -> Image.Image:
    return Image.new("RGB", (w, h), (0, 0, 0))


@pytest.mark.parametrize(
    "position, corner",
    [("bottom-right", (350, 180)), ("top-left", (10, 10)), ("center", (180, 95)), ("top", (180, 10))],
)
def test_place_honours_position_and_margin(position, corner):
    assert place((400, 200), (40, 10), position, 10) == corner


def test_watermark_is_scaled_to_the_image_and_placed_with_margin(tmp_path, marks):
    post = Postprocess.from_dict({"watermark": {"name": "white", "scale": 0.25, "margin": 0.05, "opacity": 1}})
    files = apply(black(), KEY, "png", post, ImageStore(tmp_path / "img"))
    with Image.open(files[0]["path"]) as out:
        out = out.convert("RGB")
        # 0.25 x 400 = 100 wide, 50 high; margin 0.05 x 200 = 10 px from the bottom-right corner
        bbox = Image.eval(out, lambda v: 255 if v > 128 else 0).getbbox()
        assert bbox == (290, 140, 390, 190)


def test_opacity_blends(tmp_path, marks):
    post = Postprocess.from_dict({"watermark": {"name": "white", "opacity": 0.5, "position": "center"}})
    files = apply(black(), KEY, "png", post, ImageStore(tmp_path / "img"))
    with Image.open(files[0]["path"]) as out:
        assert abs(out.convert("L").getpixel((200, 100)) - 128) <= 2


@pytest.mark.parametrize("fmt, pil", [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_format_conversion_and_thumbnail_list_every_file(tmp_path, fmt, pil):
    post = Postprocess.from_dict({"format": fmt, "quality": 70, "thumbnail": 64})
    store = ImageStore(tmp_path / "img")
    files = apply(black(), KEY, "png", post, store)
    assert [f["role"] for f in files] == ["final", "thumbnail"]
    with Image.open(files[0]["path"]) as final, Image.open(files[1]["path"]) as thumb:
        assert (final.format, final.size) == (pil, (400, 200))
        assert (thumb.format, thumb.size) == (pil, (64, 32))
    for f in files:
        assert Path(f["path"]).parent == store.root and Path(f["path"]).stem == f["key"]


def test_names_are_deterministic_and_reused(tmp_path, marks):
    store = ImageStore(tmp_path / "img")
    post = Postprocess.from_dict({"watermark": "white", "format": "jpeg", "thumbnail": 50})
    first = apply(black(), KEY, "png", post, store)
    mtimes = [Path(f["path"]).stat().st_mtime_ns for f in first]
    second = apply(black(), KEY, "png", post, store)
    assert [f["path"] for f in first] == [f["path"] for f in second]
    assert [Path(f["path"]).stat().st_mtime_ns for f in second] == mtimes  # found, not rewritten
    other = apply(black(), KEY, "png", Postprocess.from_dict({"watermark": "white", "format": "png"}), store)
    assert other[0]["path"] != first[0]["path"]
    # a new watermark image under the same name gives new names, never overwrites old posters
    Image.new("RGBA", (40, 20), (255, 0, 0, 255)).save(marks / "white.png")
    import os

    os.utime(marks / "white.png", ns=(1, 1))
    third = apply(black(), KEY, "png", post, store)
    assert third[0]["path"] != first[0]["path"]
    assert not list(store.root.glob("*.part"))


def test_worker_postprocesses_and_lists_every_file(procs, producer: Producer, marks):
    procs.inference(latency_a="0", latency_b="0")
    procs.worker(zimg_watermark_dir=str(marks))
    options = {"postprocess": {"watermark": {"name": "white", "position": "top-left"}, "format": "webp",
                               "thumbnail": 32}}  # fmt: skip
    status = producer.wait(producer.enqueue("a red boat", width=128, height=64, seed=1, options=options), timeout=30)
    assert status["status"] == "finished", status
    result = status["result"]
    assert [f["role"] for f in result["files"]] == ["final", "thumbnail", "original"]
    assert result["path"] == result["files"][0]["path"] and result["format"] == "webp"
    assert result["original_path"] == result["files"][2]["path"] and result["files"][2]["format"] == "png"
    for f in result["files"]:
        assert Path(f["path"]).is_file()
    with Image.open(result["path"]) as img:
        assert img.format == "WEBP" and img.size == (128, 64)
    # the same request again: every file found, nothing new written
    again = producer.wait(producer.enqueue("a red boat", width=128, height=64, seed=1, options=options), timeout=30)
    assert [f["path"] for f in again["result"]["files"]] == [f["path"] for f in result["files"]]
    assert again["result"]["cache_hit"] is True


def test_unknown_watermark_on_the_worker_fails_at_once(procs, producer: Producer, marks, monkeypatch):
    procs.inference(latency_a="0", latency_b="0")
    procs.worker(zimg_watermark_dir=str(marks))
    monkeypatch.delenv("ZIMG_WATERMARK_DIR")  # the producer cannot check: only the worker knows
    status = producer.wait(producer.enqueue("x", width=64, height=64, options={"postprocess": {"watermark": "gone"}}),
                           timeout=30)  # fmt: skip
    assert status["status"] == "failed"
    assert "no watermark named 'gone'" in status["error"]
    assert len(status["attempts"]) == 1


def test_a_worker_without_watermark_configuration_gets_the_watermark_with_the_job(procs, marked: Producer, marks):
    """Only the producer knows ZIMG_WATERMARK_DIR: the image's bytes travel by digest through Redis."""
    procs.inference(latency_a="0", latency_b="0")
    procs.worker()  # no ZIMG_WATERMARK_DIR, no ZIMG_PRESETS
    options = {"postprocess": {"watermark": {"name": "white", "position": "top-left", "opacity": 1.0}}}
    job_id = marked.enqueue("a red boat", width=128, height=64, seed=2, options=options)
    digest = hashlib.sha256((marks / "white.png").read_bytes()).hexdigest()
    assert marked.fetch(job_id).args[1]["postprocess"]["watermark"]["sha256"] == digest
    status = marked.wait(job_id, timeout=30)
    assert status["status"] == "finished", status
    with Image.open(status["result"]["path"]) as img:
        assert img.convert("RGB").getpixel((10, 10)) == (255, 255, 255)  # the white mark, top-left


def test_a_watermark_gone_from_redis_fails_the_job_at_once_saying_so(procs, marked: Producer, marks, redis_conn):
    procs.inference(latency_a="0", latency_b="0")
    options = {"postprocess": {"watermark": "white"}}
    job_id = marked.enqueue("a boat", width=64, height=64, options=options)
    redis_conn.delete(f"zimg:watermark:{hashlib.sha256((marks / 'white.png').read_bytes()).hexdigest()}")
    procs.worker()  # started after the image expired, with no watermark configuration to fall back on
    status = marked.wait(job_id, timeout=30)
    assert status["status"] == "failed" and "no longer in Redis" in status["error"] and len(status["attempts"]) == 1


def test_a_digest_sent_by_a_client_is_replaced_or_dropped_by_the_producer(marked: Producer, marks):
    forged = {"postprocess": {"watermark": {"name": "white", "sha256": "0" * 64}}}
    _, opts = marked.prepare("x", forged)
    assert opts.postprocess.watermark.sha256 == hashlib.sha256((marks / "white.png").read_bytes()).hexdigest()
    bare = Producer(marked.connection, marked.settings.with_(watermark_dir=None))  # nothing configured here:
    _, opts = bare.prepare("x", forged)  # the name alone goes to the worker
    assert opts.postprocess.watermark.sha256 is None
