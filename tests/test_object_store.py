"""S3-compatible storage against a real moto server process on a free loopback port."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests

from workers.object_store import ObjectStore
from workers.storage import ImageStore
from zimg_queue.processes import wait_http
from zimg_queue.queue import Producer
from zimg_queue.redis_server import free_port

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3(tmp_path: Path, monkeypatch) -> Iterator[dict[str, str]]:
    """A moto S3 server process and a fresh bucket; yields the worker environment for it."""
    port = free_port()
    log = (tmp_path / "moto.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", proc, timeout=30)
        for k, v in CREDS.items():
            monkeypatch.setenv(k, v)
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="posters")
        yield {"ZIMG_STORAGE": "s3", "ZIMG_S3_ENDPOINT_URL": endpoint, "ZIMG_S3_BUCKET": "posters",
               "ZIMG_S3_ADDRESSING_STYLE": "path", **CREDS}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_put_is_content_addressed_and_skips_existing_objects(s3, tmp_path):
    store = ObjectStore.from_env(s3)
    key = "cd" * 32
    assert store.put(key, "png", b"one") == f"images/{key}.png"
    assert store.put(key, "png", b"two") == f"images/{key}.png"  # same key: never rewritten
    assert store.get(key, "png") == b"one"
    assert requests.get(store.url(f"images/{key}.png"), timeout=5).content == b"one"  # presigned
    local = ImageStore(tmp_path / "cache")
    assert store.fetch_into(local, key, "png").read_bytes() == b"one"
    assert store.get("ef" * 32, "png") is None and store.fetch_into(local, "ef" * 32, "png") is None
    with pytest.raises(ValueError):
        store.object_key("../../etc/passwd", "png")
    public = ObjectStore.from_env({**s3, "ZIMG_S3_PUBLIC_URL": "https://cdn.example.com/"})
    assert public.url("images/x.png") == "https://cdn.example.com/images/x.png"


def test_workers_on_two_hosts_share_one_bucket(s3, procs, producer: Producer, tmp_path):
    procs.inference(latency_a="0", latency_b="0")
    host_a = procs.worker(**{k.lower(): v for k, v in s3.items()})
    opts = {"postprocess": {"format": "jpeg", "thumbnail": 32}}
    status = producer.wait(producer.enqueue("a yellow kite", width=64, height=64, seed=3, options=opts), timeout=30)
    assert status["status"] == "finished", status
    result = status["result"]
    assert result["bucket"] == "posters" and result["object_key"] == f"images/{result['files'][0]['key']}.jpg"
    assert [f["role"] for f in result["files"]] == ["final", "thumbnail", "original"]
    for f in result["files"]:
        assert requests.get(f["url"], timeout=5).content == Path(f["path"]).read_bytes()
    host_a.stop()

    # Host B: its own empty image folder and no inference server at all. The bucket has the image.
    procs.started[0].stop()
    other = {**{k.lower(): v for k, v in s3.items()}, "zimg_image_dir": str(tmp_path / "host-b")}
    procs.worker(**other)
    again = producer.wait(producer.enqueue("a yellow kite", width=64, height=64, seed=3, options=opts), timeout=30)
    assert again["status"] == "finished", again
    assert again["result"]["cache_hit"] is True and again["result"]["url"]
    assert Path(again["result"]["path"]).parent == (tmp_path / "host-b").resolve()
    assert again["result"]["sha256"] == result["sha256"]


def test_web_host_without_the_file_redirects_to_the_bucket(s3, procs, producer: Producer, web, tmp_path):
    """Issue 15: a web service on another host than the worker answered the image route with 404."""
    procs.inference(latency_a="0", latency_b="0")
    procs.worker(**{k.lower(): v for k, v in s3.items()}, zimg_image_dir=str(tmp_path / "gpu-host"))
    status = producer.wait(producer.enqueue("a red lantern", width=64, height=64, seed=5), timeout=30)
    assert status["status"] == "finished", status
    result = status["result"]

    other_host = web(**s3, ZIMG_IMAGE_DIR=str(tmp_path / "web-host"))  # its own, empty image folder
    image_url = requests.get(f"{other_host.url}/v1/jobs/{status['id']}", timeout=10).json()["result"]["image_url"]
    answer = requests.get(f"{other_host.url}{image_url}", timeout=10, allow_redirects=False)
    assert answer.status_code == 302, answer.text
    assert answer.headers["Location"].startswith(s3["ZIMG_S3_ENDPOINT_URL"] + "/posters/" + result["object_key"])
    image = requests.get(f"{other_host.url}{image_url}", timeout=10)  # following the redirect, as a browser does
    assert image.status_code == 200 and hashlib.sha256(image.content).hexdigest() == result["sha256"]
    assert not (tmp_path / "web-host").exists() or not any((tmp_path / "web-host").iterdir())

    # The same web host without the bucket settings cannot know where the file went: the old 404.
    local_only = web(ZIMG_IMAGE_DIR=str(tmp_path / "web-host"))
    missing = requests.get(f"{local_only.url}{image_url}", timeout=10, allow_redirects=False)
    assert missing.status_code == 404 and missing.json()["error"] == "image_missing", missing.text


def test_only_keys_the_store_writes_are_signed(s3):
    store = ObjectStore.from_env(s3)
    assert store.owns("images/" + "ab" * 32 + ".png") and store.owns("images/" + "ab" * 32 + ".jpg")
    for bad in ("images/../secret.png", "other/" + "ab" * 32 + ".png", "images/" + "ab" * 32 + ".exe", "images/x"):
        assert not store.owns(bad), bad
