"""Security properties that are cheap to prove: no pickle from Redis, loopback by default."""

from __future__ import annotations

import json
import os
import pickle
import signal
import zlib
from pathlib import Path

import redis

from zimg_queue.cli import build_parser
from zimg_queue.queue import Producer
from zimg_queue.redis_server import EmbeddedRedis


def test_jobs_are_stored_as_json_never_pickle(producer: Producer, redis_conn: redis.Redis):
    job_id = producer.enqueue("json only", width=64, height=64, seed=3)
    raw = redis_conn.hget(f"rq:job:{job_id}", "data")
    assert raw is not None
    data = zlib.decompress(raw)
    assert not data.startswith(b"\x80"), "pickle protocol header"
    func, _instance, args, _kwargs = json.loads(data)
    assert func == "workers.job.generate" and args[0]["prompt"] == "json only"


class _Evil:
    """Unpickling this runs ``os.mkdir(path)``: the proof that a payload was unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_a_pickled_payload_planted_in_redis_is_never_unpickled(producer: Producer, redis_conn, tmp_path: Path):
    """Someone with Redis access plants a pickle in a job: the JSON worker fails the job and runs nothing."""
    from workers.worker import ZimgWorker

    marker = tmp_path / "pwned"
    job_id = producer.enqueue("victim", width=64, height=64)
    redis_conn.hset(f"rq:job:{job_id}", "data", zlib.compress(pickle.dumps(_Evil(str(marker)))))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ZimgWorker(producer.settings.queue_names, connection=redis_conn).work(burst=True)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert not marker.exists(), "the worker unpickled data from Redis"
    # The attempt failed (on the shipped retry policy it is scheduled to run again, and fails the same way).
    assert producer.fetch(job_id).get_status() in ("failed", "scheduled")


def test_servers_bind_to_loopback_by_default(tmp_path: Path):
    parser = build_parser()
    assert parser.parse_args(["inference-server"]).host == "127.0.0.1"
    assert parser.parse_args(["web"]).host == "127.0.0.1"
    command = EmbeddedRedis(tmp_path).command()
    assert command[command.index("--bind") + 1] == "127.0.0.1"
    assert command[command.index("--protected-mode") + 1] == "yes"
