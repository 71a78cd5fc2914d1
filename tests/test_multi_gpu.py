"""``zimg up --gpus 0,1``: one inference server per GPU, workers spread over them, a dead server routed around.

With the ``sim`` backend each "GPU" is a simulator process, so the layout, the
spreading and the failover all run here; only ``CUDA_VISIBLE_DEVICES`` has no GPU
behind it (checked in each server's environment).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, kill_up, wait_until
from zimg_queue.gpus import layout, parse_gpus, visible_gpus
from zimg_queue.queue import Producer
from zimg_queue.redis_server import free_port
from zimg_queue.settings import Settings, SettingsError


def test_parse_gpus_lists_all_and_rejects_bad_items(monkeypatch):
    assert parse_gpus(None) == [] and parse_gpus(" ") == []
    assert parse_gpus("0, 1,3") == ["0", "1", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # a container runtime already chose: `all` is those
    assert visible_gpus() == ["2", "3"] and parse_gpus("all") == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(SettingsError, match="ZIMG_GPUS='all'.*found no GPU"):
        parse_gpus("all")
    with pytest.raises(SettingsError, match=r"ZIMG_GPUS='0,x y'.*bad item 'x y'"):
        parse_gpus("0,x y")
    with pytest.raises(SettingsError, match="twice"):
        parse_gpus("1,1")


def test_layout_spreads_workers_and_lists_the_own_gpu_first():
    servers = layout(["0", "1", "2"], 9000, 7)
    assert [(s.gpu, s.port, s.workers) for s in servers] == [("0", 9000, 3), ("1", 9001, 2), ("2", 9002, 2)]
    assert servers[1].urls == ("http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9000")


def test_bad_gpus_setting_is_one_line_and_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
    done = subprocess.run([sys.executable, "-m", "zimg_queue.cli", "up", "--gpus", "0,;rm"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "ZIMG_GPUS" in done.stderr and "bad item" in done.stderr, done.stderr


def _two_free_ports() -> int:
    while True:
        port = free_port()
        if port < 65535 and _free(port + 1):
            return port


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


TOKEN = "multi-gpu-test-token"  # given, so `zimg up` uses it instead of making one: /metrics needs it


def _served(url: str) -> float:
    """Requests an inference server answered with an image, from its own ``/metrics``."""
    text = requests.get(f"{url}/metrics", timeout=5, headers={"Authorization": f"Bearer {TOKEN}"}).text
    found = re.search(r'^zimg_inference_requests_total\{outcome="ok"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _server_pid(port: int) -> int:
    """The pid of the ``zimg inference-server --port PORT`` process (a grandchild of ``zimg up``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"inference-server" in args and str(port).encode() in args:
            return int(entry.name)
    raise AssertionError(f"no inference server on port {port}")


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_up_gpus_serves_on_every_gpu_and_routes_around_a_killed_server(
    settings: Settings, producer: Producer, tmp_path
):
    base = _two_free_ports()
    urls = [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
    env.update(ZIMG_REDIS_URL=settings.redis_url or "", ZIMG_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    env["ZIMG_INFERENCE_TOKEN"] = TOKEN
    log = (tmp_path / "up.log").open("wb")
    cmd = [sys.executable, "-m", "zimg_queue.cli", "up", "--gpus", "0,1", "--workers", "4", "--no-web"]
    up = subprocess.Popen([*cmd, "--inference-port", str(base)], env=env, cwd=ROOT, stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        for url in urls:
            wait_until(lambda url=url: _up(url), timeout=120)
        pids = [_server_pid(base), _server_pid(base + 1)]
        assert [_environ(pid).get("CUDA_VISIBLE_DEVICES") for pid in pids] == ["0", "1"]

        # Jobs spread over both GPUs: each GPU's own workers call their own server first.
        first = [producer.enqueue(f"a lighthouse {i}", width=64, height=64, seed=i) for i in range(8)]
        assert all(producer.wait(j, timeout=120)["status"] == "finished" for j in first)
        before = [_served(url) for url in urls]
        assert all(n > 0 for n in before), before

        # SIGKILL GPU 0's server while jobs run: they go to GPU 1, none is lost, and `up` restarts it.
        jobs = [producer.enqueue(f"a harbour {i}", width=64, height=64, seed=i) for i in range(16)]
        wait_until(lambda: any(producer.status(j)["status"] != "queued" for j in jobs), timeout=60)
        os.kill(pids[0], signal.SIGKILL)
        statuses = [producer.wait(j, timeout=120) for j in jobs]
        assert [s["status"] for s in statuses] == ["finished"] * len(jobs), [s.get("error") for s in statuses]
        assert [s["attempts"] for s in statuses] == [[]] * len(jobs)  # failed over at once: no retry spent
        assert "inference_server_out_of_rotation" in (tmp_path / "up.log").read_text()
        assert _served(urls[1]) > before[1]
        assert up.poll() is None, "zimg up must keep running when one GPU's server dies"
        wait_until(lambda: _up(urls[0]) and _server_pid(base) != pids[0], timeout=60)  # restarted in place
        assert "inference-0 exited" in (tmp_path / "up.log").read_text()
    except BaseException:
        print((tmp_path / "up.log").read_text(errors="replace")[-6000:])  # shown by pytest on failure
        raise
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)  # what Ctrl-C does: `up` stops every child
            try:
                up.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_up(up)
        log.close()


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_procfile_prints_the_same_layout_and_the_readme_shows_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
    env["ZIMG_MODEL"] = "/models/z-image-turbo"  # as on a GPU host: the zimage backend, 16 workers per GPU
    cmd = [sys.executable, "-m", "zimg_queue.cli", "up", "--gpus", "0,1", "--procfile"]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert lines["inference-1"] == "CUDA_VISIBLE_DEVICES=1 zimg inference-server --backend zimage --port 7861"
    assert lines["worker-1"] == (
        "ZIMG_INFERENCE_URL=http://127.0.0.1:7861,http://127.0.0.1:7860 zimg worker --processes 16"
    )
    assert set(lines) == {"inference-0", "inference-1", "worker-0", "worker-1"}
    assert out.strip() in (ROOT / "README.md").read_text(), "README's multi-GPU Procfile block is out of date"


def test_a_taken_port_of_any_gpu_is_named_before_anything_starts():
    import socket

    base = _two_free_ports()
    port = base + 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
        cmd = [sys.executable, "-m", "zimg_queue.cli", "up", "--gpus", "0,1", "--no-web", "--inference-port"]
        done = subprocess.run([*cmd, str(base)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and f"port {port} (GPU 1's inference server)" in done.stderr, done.stderr


def test_zimg_gpus_setting_is_the_default_of_the_flag():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
    env["ZIMG_GPUS"] = "2,3"
    cmd = [sys.executable, "-m", "zimg_queue.cli", "up", "--procfile"]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "inference-2: CUDA_VISIBLE_DEVICES=2 " in out and "inference-3: CUDA_VISIBLE_DEVICES=3 " in out, out
    override = subprocess.run([*cmd, "--gpus", "5"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "CUDA_VISIBLE_DEVICES=5 " in override.stdout and "inference-2" not in override.stdout
