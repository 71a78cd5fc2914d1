"""``zimg up``: the README's first command on a machine with no Redis running, a busy port, and one image folder
for processes started in different working directories."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from PIL import Image

from zimg_queue.processes import stop_processes, wait_http
from zimg_queue.queue import Producer
from zimg_queue.redis_server import free_port
from zimg_queue.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _can_unshare() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
    env.update(extra, PYTHONUNBUFFERED="1")
    return env


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -n` (root) for a network with nothing listening")
def test_up_demo_starts_a_private_redis_and_ends_with_a_summary_whose_last_line_is_the_image(tmp_path: Path):
    # A fresh network namespace: nothing listens on 127.0.0.1:6379 there, as on a user's fresh machine.
    env = _clean_env(ZIMG_DATA_DIR=str(tmp_path / "data"))
    script = f"ip link set lo up && exec {sys.executable} -m zimg_queue.cli up --demo"
    done = subprocess.run(
        ["unshare", "-n", "bash", "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "data" / "redis" / "appendonlydir").is_dir()  # a private server, with AOF on
    assert "a private redis-server started by `zimg up`" in done.stderr  # said once, with where it came from
    lines = done.stdout.strip().splitlines()
    path = Path(lines[-1])
    assert path.parent == (tmp_path / "data" / "images").resolve()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (512, 512)
    summary = "\n".join(lines[-12:])
    assert "xdg-open" in summary and "zimg generate" in summary and "source .venv/bin/activate" in summary
    assert not re.search(r"https?://", done.stdout)  # no URL of a server that is already gone


def test_up_on_a_busy_port_says_which_flag_moves_it(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = _clean_env(ZIMG_DATA_DIR=str(tmp_path / "data"))
        args = ["up", "--web-port", str(port), "--inference-port", str(free_port())]
        done = subprocess.run([sys.executable, "-m", "zimg_queue.cli", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert f"port {port}" in last and "--web-port" in last
    assert not (tmp_path / "data" / "redis").exists()  # checked before anything was started


def test_web_and_worker_in_different_folders_share_the_default_image_folder(procs, settings: Settings, tmp_path):
    """No ZIMG_DATA_DIR / ZIMG_IMAGE_DIR anywhere: the shipped default (the user's data dir) must be one folder."""
    procs.inference(latency_a="0", latency_b="0")
    home = tmp_path / "xdg"  # the user's data dir, as platformdirs finds it (not the real one of this machine)
    env = _clean_env(XDG_DATA_HOME=str(home), ZIMG_REDIS_URL=settings.redis_url or "",
                     ZIMG_INFERENCE_URL=settings.inference_url)  # fmt: skip
    for name in ("worker-cwd", "web-cwd"):
        (tmp_path / name).mkdir()
    port = free_port()
    zimg = [sys.executable, "-m", "zimg_queue.cli"]
    log = (tmp_path / "processes.log").open("ab")
    worker = subprocess.Popen([*zimg, "worker"], env=env, cwd=tmp_path / "worker-cwd", stdout=log, stderr=log)
    web_args = ["web", "--port", str(port), "--server", "waitress", "--threads", "4"]
    web = subprocess.Popen([*zimg, *web_args], env=env, cwd=tmp_path / "web-cwd", stdout=log, stderr=log)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", web, timeout=60, ok_codes=(200, 503))
        producer = Producer(settings=Settings.from_env(env))
        status = producer.wait(producer.enqueue("a lighthouse", width=64, height=64), timeout=60)
        assert status["status"] == "finished", status
        path = Path(status["result"]["path"])
        assert path.is_absolute() and path.parent == home / "zimg-queue" / "images"
        image = requests.get(f"http://127.0.0.1:{port}/v1/jobs/{status['id']}/image", timeout=10)
        assert image.status_code == 200 and image.content == path.read_bytes()

        path.unlink()  # gone: the answer says where it looked
        missing = requests.get(f"http://127.0.0.1:{port}/v1/jobs/{status['id']}/image", timeout=10)
        assert missing.status_code == 404 and str(path) in missing.json()["message"]
    finally:
        stop_processes(worker, web)


def test_setup_skips_pip_when_pyproject_and_extras_are_unchanged(tmp_path: Path):
    """`scripts/demo` runs `scripts/setup` every time: with nothing changed it must not touch pip (14 s a run)."""
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup", clone / "scripts" / "setup")
    shutil.copy(ROOT / "pyproject.toml", clone / "pyproject.toml")
    (clone / ".venv" / "bin").mkdir(parents=True)
    (clone / ".venv" / "bin" / "zimg").write_text("#!/bin/sh\n")
    (clone / ".venv" / "bin" / "zimg").chmod(0o755)
    fake_bin = tmp_path / "bin"  # a python3 that only records that it was called
    fake_bin.mkdir()
    (fake_bin / "python3").write_text(f"#!/bin/sh\necho called >> {tmp_path / 'calls'}\nexit 1\n")
    (fake_bin / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}

    def setup(*extras: str) -> int:
        return subprocess.run(["scripts/setup", *extras], cwd=clone, env=env, capture_output=True).returncode

    assert setup() != 0 and (tmp_path / "calls").exists()  # no stamp: it installs (here: the fake python3 fails)
    (tmp_path / "calls").unlink()
    digest = hashlib.sha256((clone / "pyproject.toml").read_bytes()).hexdigest()
    (clone / ".venv" / ".zimg-setup").write_text(f"{digest} extras=\n{digest} extras=inference,test\n")
    assert setup() == 0 and setup("inference,test") == 0 and not (tmp_path / "calls").exists()
    assert setup("s3") != 0 and (tmp_path / "calls").exists()  # extras never installed: pip runs
    (tmp_path / "calls").unlink()
    with (clone / "pyproject.toml").open("a") as f:
        f.write("\n# changed\n")
    assert setup() != 0 and (tmp_path / "calls").exists()  # a changed pyproject.toml: pip runs again


def test_the_procfile_web_process_binds_port_when_set(procs, settings: Settings):
    """honcho and Procfile platforms set $PORT: the web process must listen there."""
    line = next(x for x in (ROOT / "Procfile").read_text().splitlines() if x.startswith("web:"))
    port = free_port()
    env = {**procs.env(), "PORT": str(port), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    web = subprocess.Popen(["bash", "-c", f"exec {line.split(':', 1)[1].strip()}"], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", web, timeout=60, ok_codes=(200, 503))
    finally:
        stop_processes(web)
