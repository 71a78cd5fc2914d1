"""``zimg up``: the whole local stack as child processes, stopped together.

Redis (``ZIMG_REDIS_URL`` if set, else a private one with AOF, never an unasked 6379), the
inference server (``sim`` unless ``ZIMG_MODEL`` names a model), the RQ workers
and the status web service. The same processes are listed in the ``Procfile``.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .gpus import GpuServer, layout
from .processes import SUPERVISOR_ENV, stop_processes, wait_http
from .redis_server import EmbeddedRedis, stack_redis
from .settings import Settings

#: How long `zimg up` waits on stop for its workers to finish the jobs in hand before it kills them (a job killed
#: then is not lost: its lease returns it to the queue when a worker next runs).
STOP_TIMEOUT_S = 30.0


@dataclass
class Stack:
    settings: Settings
    workers: int = 2
    web: bool = True
    web_port: int = 8000
    inference_port: int = 7860
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    #: Where the children's output goes (an open file); ``None``: this process's stdout and stderr.
    log: Any = None
    redis: EmbeddedRedis | None = None
    #: ``--gpus``: one inference server per GPU id (``CUDA_VISIBLE_DEVICES``), workers spread over them.
    gpus: list[str] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)  # GPU inference server name -> times restarted
    _restart_due: dict[str, float] = field(default_factory=dict)
    _gpu_servers: dict[str, tuple[str, GpuServer]] = field(default_factory=dict)
    #: The inference servers' token: ``ZIMG_INFERENCE_TOKEN``, or a random one made for this stack's own children.
    inference_token: str = ""

    def __post_init__(self) -> None:
        given = self.inference_token or self.settings.secret("inference_token")
        self.inference_token = given or secrets.token_urlsafe(32)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["ZIMG_REDIS_URL"] = self.settings.redis_url or ""
        env["ZIMG_INFERENCE_URL"] = self.settings.inference_url
        env["ZIMG_INFERENCE_TOKEN"] = self.inference_token  # the servers require it, the workers send it
        env["ZIMG_DATA_DIR"] = str(Path(self.settings.data_dir).resolve())
        env.setdefault("PYTHONUNBUFFERED", "1")
        env[SUPERVISOR_ENV] = str(os.getpid())  # each child stops when this process dies (die_with_supervisor)
        return env

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start one child in a session of its own: a terminal's signals (Ctrl-C, the hangup of a closed window)
        reach `zimg up` alone, which stops its children in order (:meth:`stop`). Sharing its process group, they
        each met the signal their own way: a worker died on SIGHUP mid-job, gunicorn reloaded."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "zimg_queue.cli", *args], env={**self.env(), **(env or {})}, stdout=self.log,
            stderr=self.log, start_new_session=True,
        )  # fmt: skip
        self.processes[name] = proc
        return proc

    def start(self) -> Stack:
        url, self.redis = stack_redis(self.settings.redis_url, self.settings.data_dir)
        servers = layout(self.gpus, self.inference_port, self.workers) if self.gpus else []
        inference_url = ",".join(s.url for s in servers) or f"http://127.0.0.1:{self.inference_port}"
        self.settings = self.settings.with_(redis_url=url, inference_url=inference_url)
        backend = "zimage" if self.settings.model else "sim"
        if servers:
            self.start_gpus(backend, servers)
        else:
            self.spawn("inference", "inference-server", "--backend", backend, "--port", str(self.inference_port))
            wait_http(f"{self.settings.inference_url}/healthz", self.processes["inference"], timeout=600)
            self.spawn("worker", "worker", "--processes", str(self.workers))
        from .schedules import has_schedules

        if has_schedules():  # [schedules] in $ZIMG_PRESETS: run them on RQ's CronScheduler
            self.spawn("cron", "cron")
        if self.web:
            self.spawn("web", "web", "--port", str(self.web_port))
            wait_http(
                f"http://127.0.0.1:{self.web_port}/healthz", self.processes["web"], timeout=60, ok_codes=(200, 503)
            )
        return self

    def urls(self) -> dict[str, str]:
        urls = {"redis": self.settings.redis_url or "", "inference": self.settings.inference_url}
        if self.web:
            urls["api"] = f"http://127.0.0.1:{self.web_port}/v1/jobs"
            urls["dashboard"] = f"http://127.0.0.1:{self.web_port}/rq/"
        return urls

    def start_gpus(self, backend: str, servers: list[GpuServer]) -> None:
        """One inference server per GPU, all loading at once; then each GPU's share of the workers."""
        self._gpu_servers = {f"inference-{s.gpu}": (backend, s) for s in servers}
        for name in self._gpu_servers:
            self.spawn_gpu_server(name)
        for name, (_, server) in self._gpu_servers.items():
            wait_http(f"{server.url}/healthz", self.processes[name], timeout=600)
        for server in servers:
            if server.workers:  # its own GPU's server first, the others for failover
                args = ("worker", "--processes", str(server.workers))
                self.spawn(f"worker-{server.gpu}", *args, env={"ZIMG_INFERENCE_URL": ",".join(server.urls)})

    def spawn_gpu_server(self, name: str) -> subprocess.Popen:
        backend, server = self._gpu_servers[name]
        args = ("inference-server", "--backend", backend, "--port", str(server.port))
        return self.spawn(name, *args, env={"CUDA_VISIBLE_DEVICES": server.gpu})

    def dead(self) -> list[str]:
        """Processes that exited, so the stack stops. A GPU's inference server is restarted instead.

        While it is down the workers keep it out of rotation and send its jobs to the
        other GPUs (``workers.inference_pool``); restarts back off from 2 s to 60 s.
        """
        out = []
        for name, proc in list(self.processes.items()):
            if proc.poll() is None:
                continue
            if name not in self._gpu_servers:
                out.append(name)
                continue
            count, due = self.restarts.get(name, 0), self._restart_due.get(name)
            if due is None:  # newly dead: schedule the restart
                delay = min(60.0, 2.0 * 2**count)
                print(f"{name} exited ({proc.returncode}); its jobs go to the other GPUs; restart in {delay:g} s",
                      file=sys.stderr, flush=True)  # fmt: skip
                self._restart_due[name] = time.monotonic() + delay
            elif time.monotonic() >= due:
                del self._restart_due[name]
                self.restarts[name] = count + 1
                self.spawn_gpu_server(name)
        return out

    def stop(self) -> None:
        """Web, cron and workers first (a worker finishes the job in hand: that needs an inference server), then
        the inference servers, then the private Redis. A second Ctrl-C (or hangup) meanwhile is ignored: cut short,
        this would leave the children, in sessions of their own, running."""
        with _signals_ignored(signal.SIGINT, signal.SIGHUP):
            first = [p for name, p in self.processes.items() if not name.startswith("inference")]
            stop_processes(*first, timeout=STOP_TIMEOUT_S)
            stop_processes(*(p for name, p in self.processes.items() if name.startswith("inference")))
            if self.redis:
                self.redis.stop()


@contextmanager
def _signals_ignored(*signums: int) -> Iterator[None]:
    """Ignore ``signums`` inside the block, then put the previous handlers back (outside the main thread: no-op)."""
    try:
        before = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signums}
    except ValueError:  # signal handlers can only be set from the main thread
        before = {}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
