"""The private Redis that zimg up starts when none answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from zimg_queue.connection import RedisChoice, answers, resolve_redis_url
from zimg_queue.redis_server import EmbeddedRedis, free_port, stack_redis
from zimg_queue.settings import DEFAULT_REDIS_URL, Settings

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_redis_uses_aof_and_keeps_data_across_a_kill(tmp_path: Path):
    server = EmbeddedRedis(tmp_path, port=free_port()).start()
    try:
        conn = redis.Redis.from_url(server.url)
        assert conn.config_get("appendonly") == {"appendonly": "yes"}
        assert conn.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert conn.config_get("bind")["bind"].split()[0] == "127.0.0.1"
        conn.set("kept", "yes")
        conn.execute_command("WAIT", 0, 0)
        import time

        time.sleep(1.5)  # appendfsync everysec
        server.kill()
        server.start()
        assert redis.Redis.from_url(server.url).get("kept") == b"yes"
    finally:
        server.stop()


def test_an_explicit_url_starts_nothing(tmp_path: Path):
    assert stack_redis("redis://example:6379/0", tmp_path) == ("redis://example:6379/0", None)


def test_zimg_up_without_a_url_starts_a_private_server_and_clients_find_it(tmp_path: Path):
    """Never an unasked 127.0.0.1:6379 (it may be someone else's): a private server, recorded for clients."""
    url, server = stack_redis(None, tmp_path)
    try:
        assert server is not None and url == server.url and not url.endswith(":6379/0")
        assert redis.Redis.from_url(url).ping() and (tmp_path / "redis").is_dir()
        choice = resolve_redis_url(Settings(data_dir=str(tmp_path)))  # a client with no ZIMG_REDIS_URL
        assert choice.url == url and "zimg up" in choice.source
    finally:
        server.stop()
    assert not (tmp_path / "redis" / "url").exists()  # the record goes with the server
    choice = resolve_redis_url(Settings(data_dir=str(tmp_path)))
    assert choice == RedisChoice(DEFAULT_REDIS_URL, "the default: ZIMG_REDIS_URL is not set")


#: One ``zimg up``'s hold on its Redis: ``stack_redis`` as the stack calls it, stopped on Ctrl-C as the stack stops.
HOLDER = """
import sys, time
from pathlib import Path
from zimg_queue.redis_server import stack_redis
url, server = stack_redis(None, sys.argv[1])
Path(sys.argv[2]).write_text(url)
try:
    while True:
        time.sleep(0.05)
except KeyboardInterrupt:
    server.stop()
"""


def _hold(data_dir: Path, out: Path) -> tuple[subprocess.Popen, str]:
    """Start a holder in its own session (its own terminal, as it were); wait for the URL it uses."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(data_dir), str(out)], cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 20
    while not (out.exists() and out.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the holder did not start its Redis"
        time.sleep(0.05)
    return proc, out.read_text()


def test_two_zimg_up_of_one_data_dir_share_one_private_redis(tmp_path: Path):
    """The second finds the first's Redis and uses it; whichever stops first leaves it (and its record) to the other.

    Before, the second started another redis-server on the same AOF folder and overwrote the record; its stop then
    removed the record of the first's server (clients fell back to 6379), and the first's Ctrl-C (SIGINT to its
    whole process group, Redis included) stopped the server under the second.
    """
    record = tmp_path / "redis" / "url"
    first, url = _hold(tmp_path, tmp_path / "first.url")
    second = None
    try:
        second, second_url = _hold(tmp_path, tmp_path / "second.url")
        assert second_url == url, "the second zimg up started its own Redis on the same folder"
        assert record.read_text().strip() == url
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in the first one's terminal
        assert first.wait(timeout=20) == 0
        assert redis.Redis.from_url(url).ping()  # still serving the second
        assert record.read_text().strip() == url  # and clients still find it
        os.killpg(second.pid, signal.SIGINT)
        assert second.wait(timeout=20) == 0
        assert not answers(url) and not record.exists()  # the last one out stopped it and took the record away
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if answers(url):
            redis.Redis.from_url(url).shutdown(nosave=True)
