"""``RESULT_WRITES``: Redis writes that ride in the transaction RQ closes a job with.

RQ writes a job's result (or failure, or retry) in one transaction at the end. Our own writes at that
moment (the job counters and histograms of the success callback, the final ``done`` progress) were one
round trip each *before* that transaction, so a client waiting on the result paid for them (issue 14
point 8: about 0.3 ms each on a busy 2-core box). Gathered here instead, a
:class:`~workers.worker.ZimgWorker` adds them to RQ's closing transaction (in ``cleanup_execution``,
which every ending path calls inside it) and runs at once any it could not add.

Thread-local: the lease reaper's failure callbacks run on their own thread and write at once. Under any
other worker (a plain ``rq worker``) nothing is open and every write goes at once, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis

Write = Callable[[Any], Any]  # given a pipeline, adds commands to it


class ResultWrites(threading.local):
    pending: list[Write] | None = None
    applied: bool = False

    def open(self) -> None:
        """A job starts on this thread: from now on, writes wait for its closing transaction."""
        self.pending, self.applied = [], False

    def add(self, connection: redis.Redis, write: Write) -> None:
        """Run ``write`` in the closing transaction of this thread's job, or now when none is open."""
        if self.pending is None:
            _run_now(connection, [write])
        else:
            self.pending.append(write)

    def apply(self, pipeline: Any) -> None:
        """Add every pending write to ``pipeline`` (called again if RQ retries its transaction)."""
        for write in self.pending or ():
            write(pipeline)
        self.applied = True

    def close(self, connection: redis.Redis) -> None:
        """The job is over: writes no transaction took (an error on the way) are run now."""
        pending, applied = self.pending, self.applied
        self.pending, self.applied = None, False
        if pending and not applied:
            _run_now(connection, pending)


def _run_now(connection: redis.Redis, writes: list[Write]) -> None:
    with connection.pipeline(transaction=False) as pipe:
        for write in writes:
            write(pipe)
        pipe.execute()


RESULT_WRITES = ResultWrites()
