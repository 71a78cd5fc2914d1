"""``zimg up``: the whole local stack as child processes, stopped together.

Redis (the one on 6379 if it answers, else a private one with AOF), the
inference server (``sim`` unless ``ZIMG_MODEL`` names a model), the RQ workers
and the status web service. The same processes are listed in the ``Procfile``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .processes import stop_processes, wait_http
from .redis_server import EmbeddedRedis, resolve_redis_url
from .settings import Settings


@dataclass
class Stack:
    settings: Settings
    workers: int = 2
    web: bool = True
    web_port: int = 8000
    inference_port: int = 7860
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    redis: EmbeddedRedis | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["ZIMG_REDIS_URL"] = self.settings.redis_url or ""
        env["ZIMG_INFERENCE_URL"] = self.settings.inference_url
        env["ZIMG_DATA_DIR"] = str(Path(self.settings.data_dir).resolve())
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "zimg_queue.cli", *args], env=self.env())
        self.processes[name] = proc
        return proc

    def start(self) -> Stack:
        url, self.redis = resolve_redis_url(self.settings.redis_url, self.settings.data_dir)
        self.settings = self.settings.with_(redis_url=url, inference_url=f"http://127.0.0.1:{self.inference_port}")
        backend = "zimage" if self.settings.model else "sim"
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

    def dead(self) -> list[str]:
        return [name for name, p in self.processes.items() if p.poll() is not None]

    def stop(self) -> None:
        stop_processes(*self.processes.values())
        if self.redis:
            self.redis.stop()
