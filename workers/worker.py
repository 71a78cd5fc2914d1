"""``ZimgWorker``: an RQ worker with the project's settings baked in.

It runs jobs in its own process (RQ's ``SimpleWorker``): a generate job spends
its time waiting on HTTP, so forking a work horse per job (about 10 ms here)
would only add latency. Several processes run side by side through RQ's
``WorkerPool`` so the inference server has several requests to batch.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterable

from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.worker_pool import WorkerPool

from zimg_queue.connection import connect
from zimg_queue.settings import Settings

from .job import STOP

log = logging.getLogger(__name__)


class ZimgWorker(SimpleWorker):
    """A ``SimpleWorker`` that always speaks JSON and can stop the job it is running."""

    def __init__(self, queues: Iterable[str | Queue], *args, **kwargs):
        kwargs["serializer"] = JSONSerializer
        connection = kwargs.get("connection")
        # WorkerPool builds its queues without a serializer: rebuild them so every read is JSON.
        queues = [
            Queue(q if isinstance(q, str) else q.name, connection=connection, serializer=JSONSerializer) for q in queues
        ]
        super().__init__(queues, *args, **kwargs)

    def execute_job(self, job, queue):
        STOP.clear()
        return super().execute_job(job, queue)

    def kill_horse(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """RQ's stop-job command lands here; the job notices ``STOP`` and ends as ``stopped``."""
        STOP.set()


def run(settings: Settings, *, processes: int = 1, burst: bool = False, logging_level: str = "INFO") -> None:
    """Run ``processes`` workers on the priority queues (high, then normal, then low)."""
    assert settings.redis_url, "resolve the Redis URL before starting workers"
    connection = connect(settings.redis_url)
    if processes <= 1:
        worker = ZimgWorker(settings.queue_names, connection=connection)
        worker.work(burst=burst, with_scheduler=True, logging_level=logging_level)
        return
    pool = WorkerPool(
        settings.queue_names,
        connection=connection,
        num_workers=processes,
        worker_class=ZimgWorker,
        serializer=JSONSerializer,
    )
    pool.start(burst=burst, logging_level=logging_level)
