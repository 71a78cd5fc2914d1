"""The private Redis that zimg up starts when none answers."""

from __future__ import annotations

from pathlib import Path

import redis

from zimg_queue.redis_server import EmbeddedRedis, free_port, resolve_redis_url


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
    assert resolve_redis_url("redis://example:6379/0", tmp_path) == ("redis://example:6379/0", None)


def test_with_nothing_on_the_default_port_a_private_server_is_started(tmp_path: Path, monkeypatch):
    import zimg_queue.redis_server as rs

    monkeypatch.setattr(rs, "DEFAULT_URL", f"redis://127.0.0.1:{free_port()}/0")  # a port where nothing listens
    url, server = rs.resolve_redis_url(None, tmp_path)
    try:
        assert server is not None and url == server.url and url != rs.DEFAULT_URL
        assert redis.Redis.from_url(url).ping()
        assert (tmp_path / "redis").is_dir()
    finally:
        server.stop()
