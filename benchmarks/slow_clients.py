"""Slow clients against ``zimg web``: do stalled uploads starve ``/healthz``?

Opens N connections that send a ``POST /v1/jobs`` head and the first bytes of a
``Content-Length: 1000`` body, then stall (``--reconnect``: each opens a new stalled
upload as soon as the server drops the last one, as a persistent attacker would).
Meanwhile a prober GETs ``/healthz`` every 0.1 s with a 2 s timeout. The figure is the
share of probes answered (any HTTP status), against a baseline phase with no stalls
from the same run.

    python -m benchmarks.slow_clients --server gunicorn --stalls 40 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from zimg_queue.processes import stop_processes, wait_http
from zimg_queue.redis_server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[1]
HEAD = (
    b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
) + b'{"prompt": "'


def probe(url: str, seconds: float) -> tuple[int, int]:
    ok = total = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        total += 1
        try:
            requests.get(url, timeout=2)
            ok += 1
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return ok, total


#: ``--stall-in head``: a slowloris that stops half-way through its headers.
PARTIAL_HEAD = b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl"


def stall(port: int, stop: threading.Event, reconnect: bool, dropped: list[int], first: bytes = HEAD) -> None:
    while not stop.is_set():
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(first)
            sock.settimeout(0.5)
            while not stop.is_set():
                try:
                    if not sock.recv(4096):
                        break  # the server gave up on us
                except TimeoutError:
                    continue
                except OSError:
                    break
            sock.close()
            dropped.append(1)
        except OSError:
            time.sleep(0.1)
        if not reconnect:
            stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="gunicorn", choices=["gunicorn", "waitress"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--stalls", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--reconnect", action="store_true")
    parser.add_argument("--stall-in", choices=["body", "head"], default="body")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = EmbeddedRedis(Path(tmp) / "redis", appendonly=False).start()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
        env.update(ZIMG_REDIS_URL=redis_server.url, ZIMG_INFERENCE_URL=f"http://127.0.0.1:{free_port()}",
                   ZIMG_DATA_DIR=str(Path(tmp) / "data"))  # fmt: skip
        cmd = [sys.executable, "-m", "zimg_queue.cli", "web", "--port", str(port), "--server", args.server,
               "--processes", str(args.processes), "--threads", str(args.threads)]  # fmt: skip
        web = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/healthz"
            wait_http(url, web, timeout=60, ok_codes=(200, 503))
            base_ok, base_total = probe(url, args.seconds / 2)
            stop, dropped = threading.Event(), []
            first = HEAD if args.stall_in == "body" else PARTIAL_HEAD
            threads = [threading.Thread(target=stall, args=(port, stop, args.reconnect, dropped, first), daemon=True)
                       for _ in range(args.stalls)]  # fmt: skip
            for t in threads:
                t.start()
            time.sleep(0.5)
            ok, total = probe(url, args.seconds)
            stop.set()
            base = base_ok / base_total
            out = {"server": args.server, "processes": args.processes, "threads": args.threads,
                   "stalls": args.stalls, "stall_in": args.stall_in, "reconnect": args.reconnect,
                   "baseline_answered": round(base, 3),
                   "answered_under_stalls": round(ok / total, 3), "ratio_to_baseline": round(ok / total / base, 3),
                   "probes": total, "stalled_uploads_dropped_by_server": len(dropped)}  # fmt: skip
            print(json.dumps(out))
        finally:
            stop_processes(web)
            redis_server.stop()


if __name__ == "__main__":
    main()
