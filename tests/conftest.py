"""Shared fixtures: a real redis-server, real inference servers and real RQ worker processes.

The Redis server is private to the test session (a free port, a temp folder),
started here and stopped at the end; nothing relies on a Redis already running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from zimg_queue.processes import descendants_of, stop_processes, wait_http
from zimg_queue.queue import Producer
from zimg_queue.redis_server import EmbeddedRedis, free_port
from zimg_queue.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Proc:
    """A child process of the test: one of our servers or workers."""

    args: list[str]
    env: dict[str, str]
    log: Path
    url: str | None = None
    popen: subprocess.Popen | None = None
    health_codes: tuple[int, ...] = (200,)

    def start(self, timeout: float = 60) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        self.popen = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        if self.url:
            try:
                wait_http(f"{self.url}/healthz", self.popen, timeout=timeout, ok_codes=self.health_codes)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n--- log ---\n{self.log.read_text()[-4000:]}") from None
        return self

    @property
    def pid(self) -> int:
        assert self.popen
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, like the OOM killer: no cleanup runs."""
        if self.alive():
            self.popen.kill()  # type: ignore[union-attr]
            self.popen.wait()  # type: ignore[union-attr]

    def stop(self, timeout: float = 10) -> None:
        stop_processes(self.popen, timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Processes:
    """Starts zimg processes for one test and stops them all afterwards."""

    settings: Settings
    tmp: Path
    started: list[Proc] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
        env.update(
            ZIMG_REDIS_URL=self.settings.redis_url or "",
            ZIMG_INFERENCE_URL=self.settings.inference_url,
            ZIMG_IMAGE_DIR=str(self.settings.images_path),
            ZIMG_DATA_DIR=str(self.tmp / "data"),
            ZIMG_RETRY_INTERVALS=",".join(str(i) for i in self.settings.retry_intervals),
            ZIMG_MAX_RETRIES=str(self.settings.max_retries),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def zimg(self, name: str, *args: str, url: str | None = None, env: dict | None = None, **kw) -> Proc:
        proc = Proc(
            [sys.executable, "-m", "zimg_queue.cli", *args],
            env=self.env(**(env or {})),
            log=self.tmp / "logs" / f"{name}-{len(self.started)}.log",
            url=url,
            **kw,
        )
        self.started.append(proc)
        return proc.start()

    def inference(
        self,
        port: int | None = None,
        *,
        backend: str = "sim",
        extra_args=(),
        env: dict[str, str] | None = None,
        **sim: str,
    ) -> Proc:
        """An inference server; ``sim`` keyword arguments become ``ZIMG_SIM_*`` settings, ``env`` is added as is."""
        port = port or int(self.settings.inference_url.rsplit(":", 1)[1])
        env = {**{f"ZIMG_SIM_{k.upper()}": str(v) for k, v in sim.items()}, **(env or {})}
        args = ["inference-server", "--backend", backend, "--port", str(port), *extra_args]
        return self.zimg("inference", *args, url=f"http://127.0.0.1:{port}", env=env)

    def worker(self, processes: int = 1, *, burst: bool = False, **env: str) -> Proc:
        args = ["worker", "--processes", str(processes)] + (["--burst"] if burst else [])
        return self.zimg("worker", *args, env={k.upper(): v for k, v in env.items()})

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


def start_fast_inference(log_dir: Path) -> Proc:
    """A real ``zimg inference-server`` (sim backend, zero latency, no batching window) on a free port, running.

    For module-scoped fixtures that hammer one server (fuzzing, the differential test); the caller stops it.
    """
    from zimg_queue.redis_server import free_port as _free_port

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
    env.update(ZIMG_SIM_LATENCY_A="0", ZIMG_SIM_LATENCY_B="0", PYTHONUNBUFFERED="1")
    return Proc(
        [sys.executable, "-m", "zimg_queue.cli", "inference-server", "--port", str(port), "--max-wait-ms", "0"],
        env=env,
        log=log_dir / "inference.log",
        url=f"http://127.0.0.1:{port}",
    ).start()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Z-Image pipeline (``zimg make-tiny-model``), built once per session."""
    pytest.importorskip("diffusers")
    from workers.inference.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-zimage"))


@pytest.fixture(scope="session")
def zimage_backend(tiny_model: Path) -> Iterator:
    """The ``zimage`` backend on the tiny model in this process, offline: any hub request would raise."""
    from workers.inference.backends.zimage import ZImageBackend

    with pytest.MonkeyPatch.context() as mp:
        # HF_HUB_OFFLINE=1, as huggingface_hub read it at import time.
        mp.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        backend = ZImageBackend(str(tiny_model))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A private redis-server for the whole session, with AOF like the one ``zimg up`` starts."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def redis_conn(redis_server: EmbeddedRedis) -> redis.Redis:
    conn = redis.Redis.from_url(redis_server.url)
    conn.flushall()
    return conn


@pytest.fixture
def settings(redis_conn: redis.Redis, redis_server: EmbeddedRedis, tmp_path: Path) -> Settings:
    """Settings for one test: the session Redis (flushed), a fresh image folder, a free inference port.

    Everything else is the shipped default (retry intervals, lease, outage budget): tests test what ships.
    A test that needs another value sets it with ``settings.with_(...)`` or a worker env var, and says why.
    """
    return Settings(
        redis_url=redis_server.url,
        inference_url=f"http://127.0.0.1:{free_port()}",
        data_dir=str(tmp_path / "data"),
        image_dir=str(tmp_path / "images"),
    )


@pytest.fixture
def producer(settings: Settings, redis_conn: redis.Redis) -> Producer:
    return Producer(redis_conn, settings)


@pytest.fixture
def procs(settings: Settings, tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(settings, tmp_path)
    yield processes
    processes.stop_all()


@pytest.fixture
def stack(procs: Processes) -> Processes:
    """An inference server (sim, no latency) and one worker, running: registered in Redis, so ``zimg web``'s
    ``/healthz`` counts it (a test that asserted 200 there right after starting ``zimg web`` met a worker still
    starting up on a loaded CI box)."""
    procs.inference(latency_a="0", latency_b="0")
    worker = procs.worker()
    conn = redis.Redis.from_url(procs.settings.redis_url)
    wait_until(lambda: conn.scard("rq:workers") > 0 or not worker.alive(), timeout=60)
    return procs


def kill_up(up: subprocess.Popen) -> None:
    """SIGKILL what is left of a `zimg up` started with ``start_new_session=True``: its process group, and its
    children, each in a session of its own (so that a terminal's signals reach `zimg up` alone)."""
    import signal

    children = descendants_of(up.pid)
    try:
        os.killpg(up.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    up.wait()


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead and not yet reaped by its parent, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def rate_window_with_room(window: float = 60, room: float = 10) -> None:
    """Wait until the rate limiter's current window (:class:`zimg_queue.web.limits.RateLimiter`) has ``room`` s left.

    The limiter counts in fixed windows aligned to the clock: a test whose requests straddle a window's end
    sees the count start again (a 429 that never comes, a ``Retry-After`` of 1 s). Such a test calls this first.
    """
    left = window - time.time() % window
    if left < room:
        time.sleep(left + 0.05)


def wait_until(predicate, timeout: float = 30, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


@pytest.fixture
def web(procs: Processes):
    """Start ``zimg web`` as a real process on a free port: ``web(ZIMG_API_TOKEN="t")`` -> its :class:`Proc`.

    ``proc.url`` is the base URL. One process with a few threads keeps the test machine light.
    """

    def start(*args: str, **env: str) -> Proc:
        port = free_port()
        cli = ["web", "--port", str(port), "--processes", "1", "--threads", "8", *args]
        return procs.zimg("web", *cli, url=f"http://127.0.0.1:{port}", env=env, health_codes=(200, 503))

    return start


@pytest.fixture
def web_app(settings: Settings, producer: Producer):
    """The standalone Flask app on the test's Redis, for route and status-code tests with ``test_client()``.

    ``web_app(ZIMG_API_TOKEN="t")`` builds one with extra config; the rate limit is off unless given.
    """
    from zimg_queue.web import create_app

    def build(**config: object):
        base = {
            "ZIMG_REDIS_URL": settings.redis_url,
            "ZIMG_INFERENCE_URL": settings.inference_url,
            "ZIMG_IMAGE_DIR": str(settings.images_path),
            "ZIMG_API_TOKEN": "",
            "ZIMG_RATE_LIMIT": "0",
            "ZIMG_PROMPT_BLOCKLIST": "",
        }
        app = create_app({**base, **config})
        app.config["TESTING"] = True
        return app

    return build


@contextmanager
def round_trips(thread: int | None = None) -> Iterator[list[tuple[str, ...]]]:
    """Every round trip this process makes to Redis (only ``thread``'s, when given), in order: one tuple of command
    names per trip. Counting them is how tests hold the queue's overhead down without timing anything."""
    from redis.client import Pipeline

    trips: list[tuple[str, ...]] = []
    plain, immediate, execute = redis.Redis.execute_command, Pipeline.immediate_execute_command, Pipeline.execute

    def mine() -> bool:
        return thread is None or threading.get_ident() == thread

    def plain_cmd(self, *args: Any, **kwargs: Any) -> Any:
        if mine():
            trips.append((str(args[0]).upper(),))
        return plain(self, *args, **kwargs)

    def immediate_cmd(self, *args: Any, **kwargs: Any) -> Any:
        if mine():
            trips.append((str(args[0]).upper(),))
        return immediate(self, *args, **kwargs)

    def pipeline_execute(self, *args: Any, **kwargs: Any) -> Any:
        if self.command_stack and mine():
            trips.append(tuple(str(c[0][0]).upper() for c in self.command_stack))
        return execute(self, *args, **kwargs)

    redis.Redis.execute_command = plain_cmd  # type: ignore[method-assign]
    Pipeline.immediate_execute_command = immediate_cmd  # type: ignore[method-assign]
    Pipeline.execute = pipeline_execute  # type: ignore[method-assign]
    try:
        yield trips
    finally:
        redis.Redis.execute_command = plain  # type: ignore[method-assign]
        Pipeline.immediate_execute_command = immediate  # type: ignore[method-assign]
        Pipeline.execute = execute  # type: ignore[method-assign]


@contextmanager
def in_process_worker(procs: Processes, monkeypatch: pytest.MonkeyPatch, latency_s: str = "0") -> Iterator[None]:
    """The world of a ``ZimgWorker`` run in the test's own process: a sim inference server (zero latency unless
    ``latency_s`` says), the stack's ``ZIMG_*`` settings in the environment, a fresh per-process job context, and
    afterwards the signal handlers RQ installs put back."""
    import signal

    from workers import job as job_module

    procs.inference(latency_a=latency_s, latency_b="0")
    for key, value in procs.env().items():
        if key.startswith("ZIMG_"):
            monkeypatch.setenv(key, value)
    job_module.context.cache_clear()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        job_module.context.cache_clear()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
