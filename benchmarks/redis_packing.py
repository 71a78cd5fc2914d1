"""Scenario 7: the CPU of turning a job's result transaction into bytes, and of sending it.

A worker writes each job's result in one Redis transaction of about 35 commands and 200
arguments (RQ's status, result stream, registries and execution clean-up, the worker's
counters and heartbeat, our metrics and final progress). redis-py 8 encodes every argument
in Python before hiredis packs the command; :class:`zimg_queue.packing.CommandPacker` lets
hiredis do both. The baseline is redis-py's own packer, measured in the same run on the
same commands, alone (``pack``) and as a whole ``MULTI``/``EXEC`` against a private Redis.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import redis
from redis.connection import Connection

from zimg_queue.packing import CommandPacker

from .common import Bench, row


def result_transaction() -> list[tuple[Any, ...]]:
    """Commands shaped like a job's result transaction (see ``tests/test_worker.py``), with fresh ids."""
    job, worker, execution = str(uuid.uuid4()), uuid.uuid4().hex, uuid.uuid4().hex
    now = "2026-12-05T10:51:15.271006Z"
    fields = {
        "created_at": now, "data": b"x\x9cE\x8dA\x0e\x83 \x10E\xafBX" * 12, "success_callback_name": "",
        "failure_callback_name": "", "stopped_callback_name": "", "started_at": now, "ended_at": now,
        "last_heartbeat": now, "worker_name": worker, "origin": "zimg-normal", "description": "generate(...)",
        "enqueued_at": now, "timeout": 330, "result_ttl": 86400, "failure_ttl": 604800, "status": "finished",
        "retries_left": 3, "retry_intervals": "[1, 4, 16]", "group_id": "", "repeats_left": "",
    }  # fmt: skip
    cmds: list[tuple[Any, ...]] = [
        ("HINCRBY", f"rq:worker:{worker}", "successful_job_count", 1),
        ("HINCRBYFLOAT", f"rq:worker:{worker}", "total_working_time", 0.006039),
        ("HSET", f"rq:job:{job}", "status", "finished"),
        ("HSET", f"rq:job:{job}", *[x for kv in fields.items() for x in kv]),
        ("XADD", f"rq:results:{job}", "MAXLEN", "~", 10, "*", "type", 1, "worker_name", worker,
         "return_value", b"eyJwYXRoIjogIi90bX" * 30, "created_at", now, "execution_id", execution),
        ("EXPIRE", f"rq:results:{job}", 86400),
        ("ZADD", "rq:finished:zimg-normal", 1796554275, job),
        ("EXPIRE", f"rq:job:{job}", 86400),
        ("EXPIRE", f"rq:job:{job}:dependents", 86400),
        ("EXPIRE", f"rq:job::{job}:dependencies", 86400),
        ("HDEL", f"rq:worker:{worker}", "current_job"),
        ("DEL", f"rq:execution:{job}:{execution}"),
        ("ZREM", "rq:wip:zimg-normal", f"{job}:{execution}"),
        ("ZREM", f"rq:executions:{job}", execution),
        ("HSET", f"rq:job:{job}", "meta", '{"progress": {"stage": "done", "percent": 100}, "request_id": "abc"}'),
        ("HINCRBY", "zimg:metrics:finished", "zimg-normal", 1),
        ("HINCRBY", "zimg:metrics:images", "zimg-normal", 1),
    ]  # fmt: skip
    for name in ("job_duration", "inference", "queued"):
        key = f"zimg:metrics:hist:{name}:zimg-normal"
        cmds += [("HINCRBY", key, "0.05", 1), ("HINCRBYFLOAT", key, "sum", 0.004), ("HINCRBY", key, "count", 1)]
    cmds += [
        ("HSET", f"rq:worker:{worker}", "last_heartbeat", now),
        ("EXPIRE", f"rq:worker:{worker}", 105),
        ("HSET", f"rq:worker:{worker}", "state", "idle"),
        ("EXISTS", "rq:suspended"),
        ("HEXISTS", "zimg:inference:outage:http://127.0.0.1:7860", "down_since"),
        ("LLEN", "rq:queue:zimg-high"),
        ("LLEN", "rq:queue:zimg-normal"),
        ("LLEN", "rq:queue:zimg-low"),
        ("SMEMBERS", f"rq:job:{job}:dependents"),
    ]
    return cmds


def _cpu_us(fn, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.thread_time()
        fn()
        samples.append(time.thread_time() - t0)
    return round(statistics.median(samples) * 1e6, 1)


def run(n: int = 2000, rounds: int = 5) -> dict[str, Any]:
    cmds = result_transaction()
    theirs_conn, ours_conn = Connection(), Connection(command_packer=CommandPacker())
    pack: dict[str, list[float]] = {"redis-py": [], "ours": []}
    send: dict[str, list[float]] = {"redis-py": [], "ours": []}
    with Bench("redis-packing") as bench:
        clients = {
            "redis-py": redis.Redis.from_url(bench.redis.url),
            "ours": redis.Redis.from_url(bench.redis.url, command_packer=CommandPacker()),
        }

        def transaction(client: redis.Redis) -> None:
            with client.pipeline() as pipe:
                for cmd in result_transaction():
                    pipe.execute_command(*cmd)
                pipe.execute()

        for _ in range(rounds):  # alternate, so drift on a shared machine hits both alike
            for name, conn in (("redis-py", theirs_conn), ("ours", ours_conn)):
                pack[name].append(_cpu_us(lambda conn=conn: conn.pack_commands(cmds), n))
            for name, client in clients.items():
                send[name].append(_cpu_us(lambda client=client: transaction(client), n // 10))
    p = {k: statistics.median(v) for k, v in pack.items()}
    s = {k: statistics.median(v) for k, v in send.items()}
    rows = [
        row(f"pack a job's result transaction ({len(cmds)} commands), CPU", p["ours"], "µs",
            "redis-py's own packer", p["redis-py"]),
        row("build, pack, send and read it (MULTI/EXEC, private Redis), CPU", s["ours"], "µs",
            "redis-py's own packer", s["redis-py"]),
    ]  # fmt: skip
    return {"rows": rows, "details": {"commands": len(cmds), "pack_us": pack, "transaction_us": send}}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
