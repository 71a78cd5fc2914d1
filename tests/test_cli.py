"""The ``zimg`` command as a user meets it: one line for a mistake, one Redis chosen one way and said, output for
a person by default and JSON on request, progress only on a terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import kill_up, running
from zimg_queue.processes import stop_processes, wait_http
from zimg_queue.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]


def zimg(*args: str, env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zimg_queue.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=kw.pop("cwd", ROOT), **kw)  # fmt: skip


def one_line_error(done: subprocess.CompletedProcess, code: int = 1) -> str:
    """The run failed with ``code`` and said so in one last line, without a traceback."""
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


@pytest.fixture
def env(procs) -> dict[str, str]:
    return procs.env()


def test_version(env):
    done = zimg("--version", env=env)
    assert done.returncode == 0 and done.stdout.startswith("zimg ") and done.stdout.split()[1][0].isdigit()


@pytest.mark.parametrize("command", ["status", "cancel"])
def test_an_unknown_id_is_one_line_and_exit_1(env, command):
    line = one_line_error(zimg(command, "does-not-exist", env=env))
    assert "no job 'does-not-exist'" in line and "check the id" in line


def test_redis_down_is_one_line_naming_the_url_and_where_it_came_from(env):
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    for args in (["status", "x"], ["generate", "a cat"], ["batch", "prompts.txt"]):
        line = one_line_error(zimg(*args, env={**env, "ZIMG_REDIS_URL": down}))
        assert f"no Redis answers at {down} (from ZIMG_REDIS_URL)" in line and "zimg up" in line


def test_redis_url_works_before_or_after_the_subcommand_and_is_logged_once_with_its_source(env, producer):
    job_id = producer.enqueue("a cat", width=64, height=64)
    url = env.pop("ZIMG_REDIS_URL")
    for args in (["--redis-url", url, "status", job_id], ["status", job_id, "--redis-url", url]):
        done = zimg(*args, env=env)
        assert done.returncode == 0, done.stderr
        assert job_id in done.stdout and "queued" in done.stdout
        said = [json.loads(line) for line in done.stderr.splitlines() if '"redis' in line]
        assert [(s["url"], s["source"]) for s in said] == [(url, "--redis-url")]


def test_producer_enqueue_and_the_flask_extension_resolve_redis_the_same_way(env, settings, tmp_path):
    """No ZIMG_REDIS_URL: a running `zimg up`'s recorded private Redis, for every entry point alike."""
    data = tmp_path / "data"
    (data / "redis").mkdir(parents=True)
    (data / "redis" / "url").write_text(settings.redis_url + "\n")  # what `zimg up` records for its private Redis
    code = (
        "import logging; logging.basicConfig(level=logging.INFO); "  # a script that shows its INFO logs
        "import zimg_queue; from zimg_queue import Producer, Settings; from flask import Flask; "
        "from zimg_queue.web import ZimgQueue; "
        "print(Producer(settings=Settings.from_env()).settings.redis_url); "
        "print(zimg_queue.default_producer().settings.redis_url); "
        "print(ZimgQueue(Flask('x')).settings.redis_url)"
    )
    clean = {k: v for k, v in env.items() if k != "ZIMG_REDIS_URL"}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, "ZIMG_DATA_DIR": str(data)},
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stdout.splitlines() if line.startswith("redis://")] == [settings.redis_url] * 3
    assert "using Redis" not in done.stdout  # a library never writes its logs on a script's stdout
    assert done.stderr.count("zimg up") == 1 and done.stderr.count(settings.redis_url) == 1  # once, with its source

    flask = "import logging; logging.basicConfig(level=logging.INFO); "
    flask += "from flask import Flask; from zimg_queue.web import ZimgQueue; a = Flask('x'); "
    flask += f"a.config['ZIMG_REDIS_URL'] = {settings.redis_url!r}; ZimgQueue(a)"
    done = subprocess.run([sys.executable, "-c", flask], env=clean, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "source='app.config'" in done.stderr, done.stderr


def test_guidance_scale_is_a_flag_and_the_schema_explains_the_rule(env):
    line = one_line_error(zimg("generate", "a cat", "--guidance-scale", "3.5", env=env), code=2)
    assert "guidance_scale: must be 0.0" in line and "distilled" in line


def test_json_on_generate_status_cancel(env):
    done = zimg("generate", "a cat", "--width", "64", "--height", "64", "--json", env=env)
    job_id = json.loads(done.stdout)["id"]
    status = zimg("status", job_id, "--json", env=env)
    assert json.loads(status.stdout)["status"] == "queued"
    human = zimg("status", job_id, env=env).stdout
    assert human.splitlines()[0].split() == ["id", job_id] and "status    queued" in human
    cancelled = zimg("cancel", job_id, "--json", env=env)
    assert json.loads(cancelled.stdout)["status"] == "canceled"
    assert zimg("cancel", job_id, env=env).stdout.strip() == f"job {job_id} is canceled"


def test_batch_mistakes_name_the_file_line_and_every_bad_item(env, tmp_path):
    missing = one_line_error(zimg("batch", str(tmp_path / "nope.txt"), env=env))
    assert "no such file" in missing and "nope.txt" in missing

    bad = tmp_path / "items.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": "x", "width": 100}\n{"prompt": "y", "height": 7}\n')
    line = one_line_error(zimg("batch", str(bad), env=env), code=2)
    assert "items.jsonl line 2: width" in line and "items.jsonl line 3: height" in line


def _run_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal (as a person would see it); return the exit code and what it drew."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "zimg_queue.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=slave)  # fmt: skip
    os.close(slave)
    drawn = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    proc.wait(timeout=60)
    return proc.returncode, drawn.decode(errors="replace")


def test_generate_wait_shows_progress_on_a_terminal_only(stack):
    env = stack.env()
    args = ["generate", "a lighthouse", "--width", "64", "--height", "64", "--wait"]
    code, drawn = _run_on_a_terminal(args, env)
    assert code == 0 and "\r" in drawn and "finished" in drawn
    plain = zimg(*args, "--seed", "5", env=env)
    assert plain.returncode == 0 and "\r" not in plain.stderr
    assert Path(plain.stdout.strip()).is_file()


def test_web_uses_the_redis_url_flag_over_the_environment(env, settings):
    """`zimg web --redis-url X` used to ignore the flag: the environment points at a dead port, the flag wins."""
    port = free_port()
    dead = {**env, "ZIMG_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    args = ["web", "--port", str(port), "--server", "waitress", "--threads", "2", "--redis-url", settings.redis_url]
    web = subprocess.Popen([sys.executable, "-m", "zimg_queue.cli", *args], env=dead, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", web, timeout=60, ok_codes=(200, 503))
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()
        assert health["redis"]["ok"] is True, health
    finally:
        stop_processes(web)


def test_up_with_a_redis_that_does_not_answer_says_so_before_starting_anything(env, tmp_path):
    down = f"redis://127.0.0.1:{free_port()}/0"
    args = ["up", "--web-port", str(free_port()), "--inference-port", str(free_port())]
    line = one_line_error(zimg(*args, env={**env, "ZIMG_REDIS_URL": down}))
    assert f"no Redis answers at {down} (from ZIMG_REDIS_URL)" in line


def test_batch_json_prints_the_manifest(stack, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse\n\na bowl of ramen\n")
    done = zimg("batch", str(prompts), "--json", "--campaign", "json-out", env=stack.env())
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["counts"] == {"finished": 2} and [r["item"] for r in data["rows"]] == ["line 1", "line 3"]


def _up_in_a_terminal(tmp_path: Path, **extra_env: str) -> tuple[subprocess.Popen, Path]:
    """`zimg up` on its shipped defaults (free ports), alone in a process group as a terminal job; waits until up."""
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
    env.update(ZIMG_DATA_DIR=str(tmp_path / "data"), ZIMG_IMAGE_DIR=str(tmp_path / "images"), PYTHONUNBUFFERED="1")
    env.update(extra_env)
    args = ["up", "--web-port", str(free_port()), "--inference-port", str(free_port())]
    log = tmp_path / "up.log"
    with log.open("w") as out:  # a file, not a pipe: a child left running would keep a pipe open forever
        up = subprocess.Popen([sys.executable, "-m", "zimg_queue.cli", *args], env=env, cwd=ROOT, stdout=out,
                              stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 90
    while "stack is up" not in log.read_text():
        if up.poll() is not None or time.monotonic() > deadline:
            kill_up(up)
            pytest.fail(log.read_text()[-3000:])
        time.sleep(0.1)
    return up, log


def test_closing_the_terminal_of_zimg_up_stops_its_private_redis_too(tmp_path):
    """A terminal that closes sends SIGHUP to its processes. `zimg up` stops its stack on it as on Ctrl-C.

    Its private Redis runs in a session of its own (so that another `zimg up` of the same folder can keep using
    it): before, SIGHUP killed `zimg up` outright and left that redis-server running with nobody to stop it.
    """
    import signal

    from zimg_queue.redis_server import answers

    up, log = _up_in_a_terminal(tmp_path)
    url = None
    try:
        url = (tmp_path / "data" / "redis" / "url").read_text().strip()
        assert answers(url)
        os.killpg(up.pid, signal.SIGHUP)  # the terminal went away
        assert up.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert not answers(url) and not (tmp_path / "data" / "redis" / "url").exists()
    finally:
        kill_up(up)
        if url and answers(url):
            import redis

            redis.Redis.from_url(url).shutdown(nosave=True)


def test_the_children_of_a_killed_zimg_up_stop_too(tmp_path):
    """`zimg up` SIGKILLed (the OOM killer, `kill -9`): its children, in sessions of their own, must not live on.

    Each child asks the kernel for a SIGTERM when `zimg up` dies (Linux ``PR_SET_PDEATHSIG``), so it stops as on
    Ctrl-C. Before, a killed `zimg up` left its workers, inference server and web service running, holding ports.
    """
    import signal
    import time

    from zimg_queue.processes import descendants_of

    up, log = _up_in_a_terminal(tmp_path)
    everything = descendants_of(up.pid)
    # Its private Redis outlives it by design: it holds the jobs, and the next `zimg up` of the folder adopts it.
    children = [pid for pid in everything if _name(pid) != "redis-server"]
    try:
        assert children and len(children) < len(everything), log.read_text()[-3000:]
        os.kill(up.pid, signal.SIGKILL)  # the pid alone, not its group
        up.wait()
        deadline = time.monotonic() + 30
        while [pid for pid in children if running(pid)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in children if running(pid)] == [], log.read_text()[-3000:]
    finally:
        for pid in everything:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.mark.parametrize("signame", ["SIGHUP", "SIGINT"])  # the window closed; Ctrl-C
def test_a_job_running_when_the_terminal_of_zimg_up_closes_still_finishes(tmp_path, signame):
    """The terminal's SIGHUP (and Ctrl-C's SIGINT) reach `zimg up` alone; it stops its children in order.

    Before, the hangup reached every child too: the workers died on the spot (Python's default for SIGHUP) and
    a job they were running was abandoned until its lease ran out at the next start. Now the workers are told
    to stop while the inference server still answers, so the job in hand ends ``finished``, its image written.
    """
    import signal
    import time

    from zimg_queue.queue import Producer
    from zimg_queue.settings import Settings

    up, log = _up_in_a_terminal(tmp_path, ZIMG_SIM_LATENCY_A="2", ZIMG_SIM_LATENCY_B="0")
    try:
        url = (tmp_path / "data" / "redis" / "url").read_text().strip()
        producer = Producer(settings=Settings(redis_url=url, data_dir=str(tmp_path / "data")))
        job_id = producer.enqueue("a lighthouse", width=64, height=64, seed=7)
        deadline = time.monotonic() + 30
        while producer.status(job_id)["status"] != "started":
            assert time.monotonic() < deadline, producer.status(job_id)
            time.sleep(0.05)
        os.killpg(up.pid, getattr(signal, signame))  # the terminal went away (or Ctrl-C) mid-job
        assert up.wait(timeout=60) == 0, log.read_text()[-3000:]
        images = list((tmp_path / "images").glob("*.png"))
        assert len(images) == 1, log.read_text()[-3000:]
        assert f'"job_id": "{job_id}"' in log.read_text() and '"status": "finished"' in log.read_text()
    finally:
        kill_up(up)
