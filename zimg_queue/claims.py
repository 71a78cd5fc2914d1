"""``ClaimingQueue``: RQ's ``Queue``, whose dequeue pops a job and records a *claim* on it in one step.

RQ's worker listening on several queues (ours: high, normal, low) pops with ``BLPOP``. From that
moment until the job is in the started registry the job is in no queue and no registry: a worker
killed, frozen or cut off from Redis in between lost it for good (it stayed ``queued``, in no list
anyone reads). RQ protects only single-queue workers, with an intermediate list.

Here the pop is a Lua script that takes the first job of the first non-empty queue, reads its hash
and adds the id to ``zimg:claims:<queue>`` (a sorted set scored by ``now + lease_ttl``), atomically.
The worker's start transaction removes the claim (:meth:`workers.worker.ZimgWorker.prepare_job_execution`),
so the job is always in a queue, a claim or the started registry. The lease sweeper
(:func:`workers.lease.sweep`) puts a job whose claim expired back at the *front* of its queue: it never
ran, so no attempt is spent.

Waiting: Lua cannot block, so an idle worker blocks on ``zimg:wake:<queue>`` lists instead, to which
every push through this class adds a token in the same transaction as the job (so do the workers'
scheduler and the lease sweeper, which push through it). A token only says "look again"; jobs pushed
by anything else (rq-dashboard's requeue) are found by the next look, at most :data:`WAKE_POLL_S`
later. Tokens left over when all queues are empty are deleted by the pop that found nothing, so they
never pile up. The wait and the pop after it go to Redis together (one pipeline, not a transaction): Redis
holds the pop until the wait returns and runs it at once, so a worker woken by a job has it in the same
round trip (issue 14 point 8). Its claim is then timed from before the wait, at most :data:`WAKE_POLL_S`
shorter than ``claim_ttl``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from rq import Queue
from rq.exceptions import DequeueTimeout
from rq.job import Job
from rq.utils import as_text

#: An idle worker looks at its queues at least this often, whatever wakes it (seconds).
WAKE_POLL_S = 0.5
#: Wake tokens kept per queue: enough to wake every worker, never an unbounded list.
WAKE_MAX = 64

_POP_AND_CLAIM = """
local n = tonumber(ARGV[3])
for i = 1, n do
  local id = redis.call('LPOP', KEYS[i])
  while id do
    local job = redis.call('HGETALL', ARGV[2] .. id)
    if #job > 0 then
      redis.call('ZADD', KEYS[n + i], ARGV[1], id)
      return {i, id, job}
    end
    id = redis.call('LPOP', KEYS[i])  -- its hash is gone (deleted, expired): skipped, as RQ does
  end
end
for i = 1, n do
  redis.call('DEL', KEYS[2 * n + i])
end
return false
"""

_RELEASE_EXPIRED = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[4], 'status') ~= 'queued' then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[3], '1')
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
return 1
"""


#: One subclass per claim lifetime (:meth:`ClaimingQueue.with_claim_ttl`).
_TTL_CLASSES: dict[tuple[type, float], type[ClaimingQueue]] = {}


def claims_key(queue_name: str) -> str:
    return f"zimg:claims:{queue_name}"


def wake_key(queue_name: str) -> str:
    return f"zimg:wake:{queue_name}"


class ClaimingQueue(Queue):
    """A ``Queue`` whose pushes wake waiting workers and whose ``dequeue_any`` claims what it pops."""

    #: Seconds a claim lives before the sweeper may give the job to another worker (the worker's lease).
    claim_ttl: float = 15.0

    @classmethod
    def with_claim_ttl(cls, claim_ttl: float) -> type[ClaimingQueue]:
        """This class with claims that live ``claim_ttl`` s (a worker's ``queue_class``: its lease)."""
        key = (cls, float(claim_ttl))
        if key not in _TTL_CLASSES:
            _TTL_CLASSES[key] = type(cls.__name__, (cls,), {"claim_ttl": float(claim_ttl)})
        return _TTL_CLASSES[key]

    def push_job_id(self, job_id: str, pipeline: Any = None, at_front: bool = False) -> None:
        """RQ's push, plus a wake token, in the same transaction (or one round trip of its own)."""
        pipe = pipeline if pipeline is not None else self.connection.pipeline()
        super().push_job_id(job_id, pipeline=pipe, at_front=at_front)
        self.wake(pipe)
        if pipeline is None:
            pipe.execute()

    def _enqueue_async_job(self, job: Job, pipeline: Any = None, at_front: bool = False, unique: bool = False) -> Job:
        """RQ's; a unique job (saved and pushed by RQ's own script, not :meth:`push_job_id`) gets its token after."""
        job = super()._enqueue_async_job(job, pipeline=pipeline, at_front=at_front, unique=unique)
        if unique:
            self.wake()
        return job

    def wake(self, pipeline: Any = None) -> None:
        """Tell the workers waiting on this queue to look again."""
        pipe = pipeline if pipeline is not None else self.connection.pipeline()
        pipe.lpush(wake_key(self.name), "1")
        pipe.ltrim(wake_key(self.name), 0, WAKE_MAX - 1)
        if pipeline is None:
            pipe.execute()

    @classmethod
    def dequeue_any(  # type: ignore[override]
        cls,
        queues: Iterable[Queue],
        timeout: int | None,
        connection: redis.Redis,
        job_class: type[Job] | None = None,
        serializer: Any = None,
        death_penalty_class: Any = None,
    ) -> tuple[Job, Queue] | None:
        """The first job of the first non-empty queue, claimed; waits up to ``timeout`` s (``None``: no wait)."""
        queues = list(queues)
        job_cls = job_class or cls.job_class
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = _EMPTY_A_MOMENT_AGO.get() and timeout is not None
        _EMPTY_A_MOMENT_AGO.set(False)  # a hint for the first look only
        while True:
            if wait and deadline is not None:
                found = wait_then_pop(connection, queues, cls.claim_ttl, deadline - time.monotonic())
            else:
                found = pop_and_claim(connection, queues, cls.claim_ttl)
            if found is not None:
                index, job_id, fields = found
                job = job_cls(job_id, connection=connection, serializer=serializer)
                job.restore(fields)
                return job, queues[index]
            if deadline is None:
                return None
            if deadline - time.monotonic() <= 0:
                raise DequeueTimeout(timeout, [q.key for q in queues])
            wait = True


#: Set by a worker whose last result transaction saw every queue empty (:func:`empty_a_moment_ago`).
_EMPTY_A_MOMENT_AGO: ContextVar[bool] = ContextVar("zimg_empty_a_moment_ago", default=False)


@contextmanager
def empty_a_moment_ago() -> Iterator[None]:
    """Within: the next :meth:`ClaimingQueue.dequeue_any` with a timeout waits for a wake token before it looks.

    For a worker that read every queue empty a moment ago: a look first would find nothing (one round
    trip for nothing); a job pushed since left a token, so the wait returns at once.
    """
    token = _EMPTY_A_MOMENT_AGO.set(True)
    try:
        yield
    finally:
        _EMPTY_A_MOMENT_AGO.reset(token)


def _wait_seconds(seconds: float) -> float:
    """At most :data:`WAKE_POLL_S`; never 0 (Redis would block for ever), nor a float written with an exponent."""
    return round(max(0.01, min(WAKE_POLL_S, seconds)), 3)


def _pop_keys_args(queues: Sequence[Queue], claim_ttl: float) -> tuple[list[str], list[Any]]:
    keys = [q.key for q in queues] + [claims_key(q.name) for q in queues] + [wake_key(q.name) for q in queues]
    return keys, [time.time() + claim_ttl, Job.redis_job_namespace_prefix, len(queues)]


def _found(reply: Any) -> tuple[int, str, dict[bytes, bytes]] | None:
    if not reply:
        return None
    index, job_id, flat = reply
    return int(index) - 1, as_text(job_id), dict(zip(flat[::2], flat[1::2]))


def pop_and_claim(
    connection: redis.Redis, queues: Sequence[Queue], claim_ttl: float
) -> tuple[int, str, dict[bytes, bytes]] | None:
    """One look at ``queues`` in order: ``(index, job id, job hash)`` of the job popped and claimed, or None."""
    keys, args = _pop_keys_args(queues, claim_ttl)
    return _found(connection.register_script(_POP_AND_CLAIM)(keys=keys, args=args))


def wait_then_pop(
    connection: redis.Redis, queues: Sequence[Queue], claim_ttl: float, seconds: float
) -> tuple[int, str, dict[bytes, bytes]] | None:
    """Block until a wake token arrives for one of ``queues`` (or for ``seconds``, at most :data:`WAKE_POLL_S`),
    then :func:`pop_and_claim`, in one round trip (see the module docstring)."""
    keys, args = _pop_keys_args(queues, claim_ttl)
    script: Script = connection.register_script(_POP_AND_CLAIM)
    with connection.pipeline(transaction=False) as pipe:
        pipe.blpop([wake_key(q.name) for q in queues], _wait_seconds(seconds))
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        _, reply = pipe.execute(raise_on_error=False)
    if isinstance(reply, NoScriptError):  # a Redis that has not seen the script yet (new, restarted, flushed)
        return pop_and_claim(connection, queues, claim_ttl)
    if isinstance(reply, Exception):
        raise reply
    return _found(reply)


def release_expired_claims(queue: Queue, now: float | None = None) -> list[str]:
    """Put every job whose claim expired (its worker died before starting it) back at the front of ``queue``.

    Each is taken in one script, so a job is re-queued once however many sweepers run, and never after
    its worker started it (the start transaction removes the claim).
    """
    now = time.time() if now is None else now
    key = claims_key(queue.name)
    members: list[bytes] = queue.connection.zrangebyscore(key, 0, now)  # type: ignore[assignment]
    expired = [as_text(m) for m in members]
    if not expired:
        return []
    script = queue.connection.register_script(_RELEASE_EXPIRED)
    released = []
    for job_id in expired:
        keys = [key, queue.key, wake_key(queue.name), Job.key_for(job_id)]
        if script(keys=keys, args=[job_id, now, WAKE_MAX]):
            released.append(job_id)
    return released
