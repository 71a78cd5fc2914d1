"""Scenario: what validation costs, before (hand-written checks) and after (pydantic models), in one run.

Baseline: the hand-written validator the models replaced, kept verbatim in
``benchmarks/old_validator.py`` for this comparison only. Figures:

* validation per body, from the JSON bytes a client sends (``json.loads`` + ``from_dict``), for a
  minimal body, a full body and a body with three errors (the error path builds messages);
* ``Producer.enqueue`` one by one and ``Producer.enqueue_many`` (1,000 per call) against a private
  Redis, with the producer's validator swapped for the old one as the baseline. Both producers do the
  same Redis work, so the ratio shows what validation adds to enqueue.

Old and new runs alternate in rounds (taking turns going first, each on an empty Redis) and the best
round of each is kept, so a noisy neighbour on the shared machine penalises both alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from typing import Any

from zimg_queue import queue as queue_module
from zimg_queue.request import GenerateRequest, ValidationError

from . import old_validator
from .common import Bench, row

BODIES: dict[str, bytes] = {
    "minimal body": json.dumps({"prompt": "benchmark: a paper boat"}).encode(),
    "full body": json.dumps(
        {
            "prompt": "benchmark: a paper boat on a pond, morning light",
            "negative_prompt": "blurry",
            "width": 768,
            "height": 1024,
            "num_inference_steps": 8,
            "guidance_scale": 0.0,
            "seed": 42,
            "output_format": "jpeg",
        }
    ).encode(),
    "body with 3 errors": json.dumps({"prompt": "", "width": 1000, "seed": -1}).encode(),
}
REQ = {"prompt": "benchmark: a paper boat", "width": 1024, "height": 1024, "seed": 1}


def _validate(cls: Any, raw: bytes) -> None:
    try:
        cls.from_dict(json.loads(raw))
    except (ValidationError, old_validator.ValidationError):
        pass


def _per_call_us(fn: Callable[[], Any], n: int, rounds: int) -> float:
    """Best of ``rounds`` timings of ``n`` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return round(best / n * 1e6, 2)


@contextmanager
def old_producer_validation():
    """Make :class:`zimg_queue.queue.Producer` validate with the old classes (the baseline)."""
    saved = queue_module.GenerateRequest, queue_module.JobOptions
    queue_module.GenerateRequest, queue_module.JobOptions = old_validator.GenerateRequest, old_validator.JobOptions  # type: ignore[misc]
    try:
        yield
    finally:
        queue_module.GenerateRequest, queue_module.JobOptions = saved  # type: ignore[misc]


def _rate(fn: Callable[[], Any], count: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return round(count / best, 1)


def run(n: int = 20000, single: int = 1000, batched: int = 5000, chunk: int = 1000, rounds: int = 5) -> dict:
    rows = []
    details: dict[str, Any] = {}
    for name, raw in BODIES.items():
        _validate(GenerateRequest, raw)  # warm both (first pydantic call builds nothing, but be fair)
        _validate(old_validator.GenerateRequest, raw)
        new = old = float("inf")
        for _ in range(rounds):  # alternate, keep the best of each
            old = min(old, _per_call_us(lambda raw=raw: _validate(old_validator.GenerateRequest, raw), n, 1))
            new = min(new, _per_call_us(lambda raw=raw: _validate(GenerateRequest, raw), n, 1))
        details[name] = {"new_us": new, "old_us": old}
        rows.append(row(f"validate a {name} from JSON bytes", new, "µs/body", "hand-written validator", old))

    with Bench("validation") as bench:
        producer = bench.producer()
        for _ in range(50):
            producer.enqueue(REQ)
        best = {("one", False): 0.0, ("one", True): 0.0, ("many", False): 0.0, ("many", True): 0.0}
        work = {
            "one": (lambda: [producer.enqueue(REQ) for _ in range(single)], single),
            "many": (lambda: _many(producer, batched, chunk), batched),
        }
        for i in range(rounds):
            # Each timing starts on an empty Redis, and old and new take turns going first: a queue that grew
            # during the previous timing (or a warmer cache) must not favour either side.
            for old in (i % 2 == 0, i % 2 == 1):
                for what, (fn, count) in work.items():
                    producer.connection.flushdb()
                    with old_producer_validation() if old else nullcontext():
                        best[what, old] = max(best[what, old], _rate(fn, count, 1))
        one_new, one_old, many_new, many_old = (best["one", False], best["one", True], best["many", False],
                                                best["many", True])  # fmt: skip
        details.update(enqueue_new=one_new, enqueue_old=one_old, many_new=many_new, many_old=many_old)
        baseline = "same, hand-written validator"
        rows.append(row("Producer.enqueue, one by one", one_new, "jobs/s", baseline, one_old))
        rows.append(row(f"Producer.enqueue_many ({chunk} per call)", many_new, "jobs/s", baseline, many_old))
    return {"rows": rows, "details": details}


def _many(producer: Any, total: int, chunk: int) -> None:
    for _ in range(total // chunk):
        producer.enqueue_many([REQ] * chunk)


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
