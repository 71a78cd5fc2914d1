"""The private Redis that zimg up starts when none answers."""

from __future__ import annotations

from pathlib import Path

import redis

from zimg_queue.connection import RedisChoice, resolve_redis_url
from zimg_queue.redis_server import EmbeddedRedis, free_port, stack_redis
from zimg_queue.settings import DEFAULT_REDIS_URL, Settings


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
