"""The server's dynamic batching: unit tests of ``Batcher`` with a recording fake backend, then a real server.

The fake backend stands in for the GPU so the tests look at the batching logic only: which requests share
a call, how long each waited, what happens on out-of-memory and on a backend failure. Timing assertions
leave generous slack (a 2-core CI machine can stall for tens of milliseconds); they catch a request held
for seconds, not one held for 60 ms instead of 50. Some tests raise ``max_queue`` above its default (4 x
``max_batch``) to submit many requests at once; the admission tests run on the default.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests

from workers.inference.backends.base import DeviceFailure, InferenceRequest, OutOfMemory, ProgressFn
from workers.inference.batcher import Batcher, Pending
from workers.inference.busy import BusyClock
from workers.inference.capacity import Capacity
from workers.inference.errors import Cancelled, DeadlineExceeded, QueueFull, Unhealthy, classify

SLACK = 0.5  # seconds: scheduling noise allowed on top of max_wait


@dataclass
class Call:
    batch: list[InferenceRequest]
    started: float
    progress_seen: list[dict[str, tuple[int, int]]] = field(default_factory=list)


class RecordingBackend:
    """Records every ``generate`` call; answers each request with itself so the caller can match them."""

    name = "fake"

    def __init__(
        self,
        latency: float = 0.0,
        oom_above: int | None = None,
        fail_if: Callable[[Sequence[InferenceRequest]], bool] | None = None,
    ) -> None:
        self.latency = latency
        self.oom_above = oom_above
        self.fail_if = fail_if
        self.error: Exception = RuntimeError("fake backend bug")
        self.calls: list[Call] = []
        self.batcher: Batcher | None = None  # set after construction, to watch its progress table
        self._lock = threading.Lock()

    def generate(self, batch: Sequence[InferenceRequest], progress: ProgressFn | None = None) -> list:
        call = Call(list(batch), time.monotonic())
        with self._lock:
            self.calls.append(call)
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise OutOfMemory(f"CUDA out of memory (fake: batch of {len(batch)} > {self.oom_above})")
        if self.fail_if and self.fail_if(batch):
            raise self.error
        steps = batch[0].num_inference_steps
        for step in range(1, steps + 1):
            if self.latency:
                time.sleep(self.latency / steps)
            if progress:
                progress(step, steps)
                if self.batcher is not None:
                    call.progress_seen.append(dict(self.batcher.progress))
        return list(batch)

    def health(self) -> dict:
        return {"backend": self.name, "loaded": True}

    def close(self) -> None:
        pass


def req(seed: int = 0, width: int = 64, height: int = 64, steps: int = 2, prompt: str = "p") -> InferenceRequest:
    return InferenceRequest(prompt=prompt, width=width, height=height, num_inference_steps=steps, seed=seed)


@pytest.fixture
def make_batcher() -> Iterator[Callable[..., tuple[Batcher, RecordingBackend]]]:
    made: list[Batcher] = []

    def make(backend: RecordingBackend | None = None, **kwargs) -> tuple[Batcher, RecordingBackend]:
        backend = backend or RecordingBackend()
        batcher = Batcher(backend, **kwargs)
        backend.batcher = batcher
        made.append(batcher)
        return batcher, backend

    yield make
    for batcher in made:
        batcher.close()


def submit_concurrently(batcher: Batcher, requests_: Sequence[InferenceRequest], jitter: float = 0.0) -> list[Pending]:
    """Submit from one thread per request (like several RQ workers), optionally spread over ``jitter`` seconds."""
    rng = random.Random(0)
    delays = [rng.uniform(0, jitter) for _ in requests_]
    items: list[Pending | None] = [None] * len(requests_)
    gate = threading.Barrier(len(requests_))

    def one(i: int) -> None:
        gate.wait()
        time.sleep(delays[i])
        items[i] = batcher.submit(requests_[i], f"r{i}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests_))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [item for item in items if item is not None]


def test_never_mixes_sizes_and_never_exceeds_max_batch(make_batcher) -> None:
    # 35 requests at once: --max-queue raised from its default (4 x max_batch), which the queue tests cover.
    batcher, backend = make_batcher(max_batch=4, max_wait_s=0.05, max_queue=64)
    sizes = [(64, 64), (128, 64), (64, 128)]
    requests_ = [req(seed=i, width=sizes[i % 3][0], height=sizes[i % 3][1]) for i in range(30)]
    # Steps are part of the key too: a few requests of one size with other steps.
    requests_ += [req(seed=100 + i, steps=3) for i in range(5)]
    items = submit_concurrently(batcher, requests_, jitter=0.1)
    for item, request in zip(items, requests_):
        assert item.future.result(timeout=10) is request  # each request got its own answer
    assert sum(len(c.batch) for c in backend.calls) == len(requests_)
    for call in backend.calls:
        assert len({r.batch_key for r in call.batch}) == 1, f"mixed keys in one batch: {call.batch}"
        assert 1 <= len(call.batch) <= 4
    assert any(len(c.batch) > 1 for c in backend.calls), "nothing was batched"
    assert batcher.stats["images"] == len(requests_) and batcher.stats["batches"] == len(backend.calls)


def test_never_holds_a_request_longer_than_max_wait(make_batcher) -> None:
    max_wait = 0.05
    batcher, backend = make_batcher(max_batch=8, max_wait_s=max_wait, max_queue=64)
    requests_ = [req(seed=i, width=64 * (1 + i % 2)) for i in range(24)]
    items = submit_concurrently(batcher, requests_, jitter=0.3)
    for item in items:
        item.future.result(timeout=10)
        held = item.started - item.arrived
        # The backend is instant, so any wait beyond max_wait would be the batcher holding the request.
        assert 0 <= held <= max_wait + SLACK, f"request held {held:.3f} s with max_wait {max_wait} s"


def test_a_lone_request_on_an_idle_server_does_not_wait(make_batcher) -> None:
    """Nothing else queued, the GPU idle: waiting for company would only add latency."""
    batcher, _ = make_batcher(max_batch=8, max_wait_s=5.0)
    item = batcher.submit(req(), "lone")
    item.future.result(timeout=10)
    assert item.started - item.arrived < 2.0  # far below the 5 s window
    assert item.batch_size == 1


def test_after_a_batch_its_clients_get_max_wait_to_ride_along(make_batcher) -> None:
    """Right after a batch ends, a short queue waits (at most max_wait) for the clients that batch answered."""
    batcher, backend = make_batcher(RecordingBackend(latency=0.3), max_batch=4, max_wait_s=1.0)
    first = batcher.submit(req(seed=0), "first")  # idle: goes at once
    wait_until_started(first)
    second = batcher.submit(req(seed=1), "second")  # queued while the first runs
    first.future.result(timeout=10)
    third = batcher.submit(req(seed=2), "third")  # the first's client comes back
    for item in (second, third):
        item.future.result(timeout=10)
    assert [len(c.batch) for c in backend.calls] == [1, 2]
    assert second.batch_id == third.batch_id != first.batch_id


def test_a_full_batch_goes_without_waiting_out_max_wait(make_batcher) -> None:
    backend = RecordingBackend(latency=0.2)
    batcher, backend = make_batcher(backend, max_batch=4, max_wait_s=5.0)
    start = time.monotonic()
    items = [batcher.submit(req(seed=0), "r0")]  # the first goes alone, 4 queue behind it
    wait_until_started(items[0])
    items += [batcher.submit(req(seed=i), f"r{i}") for i in range(1, 5)]
    for item in items:
        item.future.result(timeout=10)
    assert time.monotonic() - start < 3.0  # far less than the 5 s max_wait
    assert [len(c.batch) for c in backend.calls] == [1, 4]
    assert {item.batch_size for item in items[1:]} == {4}


def test_requests_of_another_size_do_not_wait_for_a_full_batch(make_batcher) -> None:
    """A full batch of one key goes at once; the other key's request goes when its own wait is over."""
    batcher, backend = make_batcher(max_batch=2, max_wait_s=0.1)
    odd = batcher.submit(req(width=128), "odd")
    pair = [batcher.submit(req(seed=i), f"r{i}") for i in range(2)]
    for item in [odd, *pair]:
        item.future.result(timeout=10)
    assert sorted(len(c.batch) for c in backend.calls) in ([1, 2], [1, 1, 1])
    assert odd.started - odd.arrived <= 0.1 + SLACK


def run_rounds(batcher: Batcher, rounds: int, per_round: int) -> list:
    """Rounds of ``per_round`` requests that queue together behind a small request of another size."""
    answers = []
    for r in range(rounds):
        blocker = batcher.submit(req(seed=100 * r, width=128, steps=8))
        wait_until_started(blocker)
        items = [batcher.submit(req(seed=100 * r + i), f"r{r}-{i}") for i in range(per_round)]
        answers += [(item, item.future.result(timeout=10)) for item in items]
    return answers


def test_three_rounds_of_8_with_room_for_2_make_at_most_one_failed_call(make_batcher) -> None:
    """Learned capacity: one OOM at 8 caps the shape; the next rounds never try 8 (or 4) again."""
    backend = RecordingBackend(oom_above=2, latency=0.05)
    batcher, backend = make_batcher(backend, max_batch=8, max_wait_s=0.0)
    answers = run_rounds(batcher, rounds=3, per_round=8)
    assert all(image is item.request for item, image in answers)  # every request answered with its own image
    failed = [len(c.batch) for c in backend.calls if len(c.batch) > 2]
    assert failed == [8], [len(c.batch) for c in backend.calls]
    assert batcher.stats["failed_calls"] == 1 and batcher.stats["images"] == 24 + 3
    assert batcher.capacity.snapshot()["64x64"]["fail"] == 8
    assert batcher.progress == {}


def test_the_cap_grows_back_after_a_run_of_successes_but_stays_below_what_failed(make_batcher) -> None:
    backend = RecordingBackend(oom_above=4, latency=0.05)
    batcher, backend = make_batcher(backend, max_batch=8, max_wait_s=0.0, probe_after=2)
    run_rounds(batcher, rounds=6, per_round=8)
    sizes = [len(c.batch) for c in backend.calls if c.batch[0].width == 64]
    assert sizes[0] == 8 and 4 in sizes, sizes  # it probed up again
    assert sizes.count(8) == 1, sizes  # and never retried the size known to fail
    assert batcher.capacity.limit((64, 64)) == 4


def test_after_a_one_off_oom_the_batcher_gets_back_to_full_batches(make_batcher) -> None:
    """Memory short for one batch only: once it frees, a run of successes brings the shape back to 8."""
    backend = RecordingBackend(oom_above=2, latency=0.01)
    batcher, backend = make_batcher(backend, max_batch=8, max_wait_s=0.0, probe_after=2)
    run_rounds(batcher, rounds=1, per_round=8)
    backend.oom_above = None  # the other process let go of its memory
    for _ in range(12):
        run_rounds(batcher, rounds=1, per_round=8)
        if batcher.capacity.limit((64, 64)) == 8:
            break
    assert batcher.capacity.limit((64, 64)) == 8, [len(c.batch) for c in backend.calls]
    run_rounds(batcher, rounds=1, per_round=8)
    assert len(backend.calls[-1].batch) == 8 and batcher.stats["failed_calls"] == 1


def drive(capacity: Capacity, room: Callable[[int], int], batches: int) -> list[tuple[int, int]]:
    """Full 64x64 batches at the learned limit on a GPU with room for ``room(i)``; (i, size) of each that failed."""
    failed = []
    for i in range(batches):
        size = capacity.limit((64, 64))
        if size > room(i):
            failed.append((i, size))
            capacity.record_oom((64, 64), size)
        else:
            capacity.record_success((64, 64), size)
    return failed


def test_a_one_off_oom_does_not_cost_the_size_forever() -> None:
    """Memory short once (fragmentation, another process): after a longer run of successes 8 is tried again."""
    capacity = Capacity(max_batch=8, probe_after=8)
    assert drive(capacity, room=lambda i: 2, batches=1) == [(0, 8)]
    assert capacity.limit((64, 64)) == 1
    assert drive(capacity, room=lambda i: 8, batches=100) == []  # the memory is back
    assert capacity.limit((64, 64)) == 8
    assert capacity.snapshot()["64x64"]["fail"] == 0  # 8 fit again: the failure is forgotten


def test_a_size_that_never_fits_is_retried_with_growing_gaps() -> None:
    """Exponential backoff: each failure of a size doubles the run of successes needed before its next try."""
    capacity = Capacity(max_batch=8, probe_after=8)
    failed = drive(capacity, room=lambda i: 2, batches=200)
    sizes = [size for _, size in failed]
    assert sizes[:3] == [8, 4, 3], failed  # learning the limit: each size above it fails once on the way down
    assert sizes.count(3) >= 2, failed  # the smallest size that failed is tried again ...
    assert len(failed) <= math.log2(200), failed  # ... but rarely
    gaps = [b - a for (a, _), (b, _) in zip(failed[2:], failed[3:])]
    assert all(later > 1.5 * earlier for earlier, later in zip(gaps, gaps[1:])), failed
    assert capacity.limit((64, 64)) in (2, 3)


def test_max_batch_pixels_caps_big_sizes_up_front(make_batcher) -> None:
    batcher, backend = make_batcher(max_batch=8, max_wait_s=5.0, max_batch_pixels=2 * 128 * 128)
    big = [batcher.submit(req(seed=i, width=128, height=128), f"b{i}") for i in range(4)]
    for item in big:
        item.future.result(timeout=10)
    assert max(len(c.batch) for c in backend.calls) == 2
    assert batcher.capacity.limit((64, 64)) == 8  # small sizes keep the full batch


def test_a_single_request_that_does_not_fit_gets_out_of_memory(make_batcher) -> None:
    batcher, backend = make_batcher(RecordingBackend(oom_above=0), max_batch=8, max_wait_s=0.01)
    item = batcher.submit(req(), "big")
    with pytest.raises(OutOfMemory, match="out of memory"):
        item.future.result(timeout=10)
    assert [len(c.batch) for c in backend.calls] == [1]
    # The batcher thread survived: it still serves requests.
    backend.oom_above = None
    assert batcher.submit(req(seed=1)).future.result(timeout=10).seed == 1


def test_one_bad_request_in_8_fails_alone(make_batcher) -> None:
    """Failure isolation: a non-OOM error re-runs the batch in halves until the bad request is alone."""
    backend = RecordingBackend(fail_if=lambda batch: any(r.prompt == "boom" for r in batch), latency=0.05)
    batcher, _ = make_batcher(backend, max_batch=8, max_wait_s=0.0)
    blocker = batcher.submit(req(seed=99), "blocker")  # keeps the GPU busy while the 8 queue up
    wait_until_started(blocker)
    items = [batcher.submit(req(seed=i, prompt="boom" if i == 5 else "p"), f"r{i}") for i in range(8)]
    blocker.future.result(timeout=10)
    for i, item in enumerate(items):
        if i == 5:
            with pytest.raises(RuntimeError, match="fake backend bug"):
                item.future.result(timeout=10)
        else:
            assert item.future.result(timeout=10).seed == i
    assert len(backend.calls[1].batch) == 8  # they did run as one batch first
    assert batcher.stats["images"] == 1 + 7 and batcher.stats["isolations"] >= 1
    assert batcher.submit(req(seed=5)).future.result(timeout=10).seed == 5  # the thread lives on
    assert batcher.progress == {}


def test_progress_is_reported_per_request_id_and_cleaned_up(make_batcher) -> None:
    batcher, backend = make_batcher(RecordingBackend(latency=0.05), max_batch=3, max_wait_s=5.0)
    blocker = batcher.submit(req(seed=99, steps=4))
    wait_until_started(blocker)
    items = [batcher.submit(req(seed=i, steps=4), f"job-{i}") for i in range(2)]
    items.append(batcher.submit(req(seed=3, steps=4)))  # no request id: no progress entry
    for item in [blocker, *items]:
        item.future.result(timeout=10)
    call = backend.calls[1]
    assert [seen["job-0"] for seen in call.progress_seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for seen in call.progress_seen:
        assert set(seen) == {"job-0", "job-1"}
    assert batcher.progress == {}  # cleaned up once answered


def test_max_batch_1_means_no_batching(make_batcher) -> None:
    batcher, backend = make_batcher(max_batch=1, max_wait_s=0.5, max_queue=8)
    start = time.monotonic()
    items = submit_concurrently(batcher, [req(seed=i) for i in range(6)])
    for item in items:
        item.future.result(timeout=10)
        assert item.batch_size == 1
    assert [len(c.batch) for c in backend.calls] == [1] * 6
    assert time.monotonic() - start < 0.5 * 6  # a batch of one is full: no waiting out max_wait


def test_max_batch_below_1_is_refused() -> None:
    with pytest.raises(ValueError):
        Batcher(RecordingBackend(), max_batch=0)


def test_closed_batcher_refuses_new_requests() -> None:
    batcher = Batcher(RecordingBackend(), max_batch=2, max_wait_s=0.01)
    assert batcher.submit(req()).future.result(timeout=10).seed == 0
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(req())


# --- admission: backpressure, deadlines, cancellation, single flight ---------------------------------------


def busy_batcher(make_batcher, **kwargs) -> tuple[Batcher, RecordingBackend, Pending]:
    """A batcher whose GPU is held by a 0.5 s request, so what comes next queues."""
    batcher, backend = make_batcher(RecordingBackend(latency=0.5), **kwargs)
    blocker = batcher.submit(req(seed=999, width=128), "blocker")
    wait_until_started(blocker)
    return batcher, backend, blocker


def wait_until_started(item: Pending, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while item.started is None:
        assert time.monotonic() < deadline, "never started"
        time.sleep(0.005)


def test_the_default_max_queue_is_four_batches_and_beyond_it_comes_queue_full(make_batcher) -> None:
    assert make_batcher(max_batch=1)[0].max_queue == 16  # never below the 16 workers zimg up runs with a model
    batcher, backend, blocker = busy_batcher(make_batcher, max_batch=5, max_wait_s=0.0)
    assert batcher.max_queue == 20
    queued = [batcher.submit(req(seed=i)) for i in range(20)]
    with pytest.raises(QueueFull) as info:
        batcher.submit(req(seed=100))
    assert info.value.status == 503 and info.value.retry_after >= 1
    # An identical request joins its twin instead of queueing: no slot needed.
    twin = batcher.submit(req(seed=3))
    for item in [blocker, *queued, twin]:
        item.future.result(timeout=20)
    assert twin.future.result() is queued[3].future.result()
    assert batcher.counts["rejected"] == 1


def test_a_request_past_its_deadline_never_reaches_the_gpu(make_batcher) -> None:
    batcher, backend, blocker = busy_batcher(make_batcher, max_batch=4, max_wait_s=0.0)
    with pytest.raises(DeadlineExceeded):
        batcher.submit(req(seed=1), deadline=time.time() - 1)  # already passed on arrival
    soon = batcher.submit(req(seed=2), "soon", deadline=time.time() + 0.1)
    later = batcher.submit(req(seed=3), "later", deadline=time.time() + 60)
    with pytest.raises(DeadlineExceeded):
        batcher.wait(soon)
    assert batcher.wait(later).seed == 3
    blocker.future.result(timeout=10)
    seeds = [r.seed for c in backend.calls for r in c.batch]
    assert seeds == [999, 3], seeds
    assert batcher.counts["expired"] == 2


def test_a_cancelled_request_is_dropped_and_a_running_one_is_not(make_batcher) -> None:
    batcher, backend, blocker = busy_batcher(make_batcher, max_batch=4, max_wait_s=0.0)
    blocker_job = batcher.submit(req(seed=999, width=128), job_id="job-blocker")  # joins the running twin
    victim = batcher.submit(req(seed=1), job_id="job-1")
    keeper = batcher.submit(req(seed=2), job_id="job-2")
    assert batcher.cancel("job-1") is True
    assert batcher.cancel("job-1") is None  # gone
    assert batcher.cancel("nope") is None
    assert batcher.cancel("job-blocker") is False  # on the GPU already
    with pytest.raises(Cancelled):
        victim.future.result(timeout=10)
    assert keeper.future.result(timeout=10).seed == 2
    assert blocker_job.future.result(timeout=10).seed == 999
    assert [r.seed for c in backend.calls for r in c.batch] == [999, 2]


def test_identical_requests_in_flight_are_computed_once(make_batcher) -> None:
    batcher, backend, blocker = busy_batcher(make_batcher, max_batch=4, max_wait_s=0.0)
    same = [batcher.submit(req(seed=7), f"c{i}", job_id=f"j{i}") for i in range(3)]
    jpeg = batcher.submit(InferenceRequest(prompt="p", width=64, height=64, num_inference_steps=2, seed=7,
                                           output_format="jpeg"))  # fmt: skip
    other = batcher.submit(req(seed=8))
    assert batcher.depth == 2
    assert batcher.cancel("j0") is True  # one twin cancelled: the others still get the image
    results = [item.future.result(timeout=10) for item in [*same[1:], jpeg]]
    assert all(r is results[0] for r in results)
    assert other.future.result(timeout=10).seed == 8
    blocker.future.result(timeout=10)
    assert sorted(r.seed for c in backend.calls for r in c.batch) == [7, 8, 999]
    assert batcher.counts["deduplicated"] == 3


# --- the device failing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "CUDA out of memory. Tried to allocate 2.00 GiB",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    ],
)
def test_cublas_and_cudnn_allocation_failures_count_as_out_of_memory(make_batcher, message: str) -> None:
    assert classify(RuntimeError(message)) == "oom"
    backend = RecordingBackend(fail_if=lambda batch: len(batch) > 1)
    backend.error = RuntimeError(message)
    batcher, backend = make_batcher(backend, max_batch=4, max_wait_s=5.0)
    items = [batcher.submit(req(seed=i)) for i in range(4)]
    assert [item.future.result(timeout=10).seed for item in items] == [0, 1, 2, 3]
    assert batcher.stats["oom_splits"] == 1 and batcher.capacity.limit((64, 64)) == 1


def test_an_unrecoverable_cuda_error_fails_everything_and_calls_on_fatal(make_batcher) -> None:
    assert classify(RuntimeError("CUDA error: an illegal memory access was encountered")) == "fatal"
    died: list[BaseException] = []
    backend = RecordingBackend(fail_if=lambda batch: True, latency=0.2)
    backend.error = RuntimeError("CUDA error: an illegal memory access was encountered")
    batcher, _ = make_batcher(backend, max_batch=1, max_wait_s=0.0, on_fatal=died.append)
    first = batcher.submit(req(seed=1))
    queued = batcher.submit(req(seed=2))
    for item in (first, queued):
        with pytest.raises(Unhealthy):
            item.future.result(timeout=10)
    assert len(died) == 1 and isinstance(died[0], DeviceFailure)
    assert len(backend.calls) == 1  # nothing ran after the failure
    with pytest.raises(Unhealthy):
        batcher.submit(req(seed=3))


def test_busy_clock_counts_the_share_of_the_window_spent_generating() -> None:
    now = [100.0]
    clock = BusyClock(window=60, clock=lambda: now[0])
    now[0] += 60
    clock.start()
    now[0] += 30  # busy for 30 s, in progress
    assert clock.ratio() == pytest.approx(0.5)
    clock.stop()
    now[0] += 30
    assert clock.ratio() == pytest.approx(0.5)
    now[0] += 60
    assert clock.ratio() == 0.0


def test_batches_never_mix_the_backends_groups(make_batcher) -> None:
    """A backend's ``admit`` hook groups requests (caption-token buckets for flash attention)."""
    backend = RecordingBackend(latency=0.2)
    backend.admit = lambda r: len(r.prompt) // 32  # type: ignore[attr-defined]
    batcher, backend = make_batcher(backend, max_batch=8, max_wait_s=0.0)
    blocker = batcher.submit(req(seed=99))
    wait_until_started(blocker)
    items = [batcher.submit(req(seed=i, prompt="x" * (5 if i % 2 else 40))) for i in range(6)]
    for item in [blocker, *items]:
        item.future.result(timeout=10)
    for call in backend.calls:
        assert len({len(r.prompt) // 32 for r in call.batch}) == 1
    assert sorted(len(c.batch) for c in backend.calls[1:]) == [3, 3]


def test_real_server_batches_concurrent_http_clients(procs) -> None:
    """8 concurrent clients against ``zimg inference-server`` (sim, t(B) = 0.2 + 0.01 B): batches form."""
    server = procs.inference(latency_a="0.2", latency_b="0.01")
    url = server.url
    per_client = 3

    def client(c: int) -> list[dict]:
        with requests.Session() as session:
            out = []
            for i in range(per_client):
                body = {"prompt": f"client {c}", "width": 64, "height": 64, "seed": 10 * c + i}
                resp = session.post(f"{url}/v1/generate", json=body, timeout=30)
                assert resp.status_code == 200, resp.text
                out.append(resp.json())
            return out

    with ThreadPoolExecutor(8) as pool:
        answers = [a for answers in pool.map(client, range(8)) for a in answers]
    total = 8 * per_client
    assert len(answers) == total and all(a["image"] and a["backend"] == "sim" for a in answers)
    sizes = [a["batch_size"] for a in answers]
    assert max(sizes) > 1, f"no batching happened: {sizes}"
    assert all(1 <= s <= 8 for s in sizes)
    stats = requests.get(f"{url}/healthz", timeout=5).json()["batcher"]
    assert stats["images"] == total and stats["depth"] == 0 and stats["oom_splits"] == 0
    # Each batch of B answered B responses that each say B, so sum(1/B) over responses counts the batches.
    assert round(sum(1 / s for s in sizes)) == stats["batches"] < total
    assert stats["max_batch"] == 8 and stats["busy_s"] > 0


def test_each_batch_is_logged_with_its_id_and_its_members_request_ids(make_batcher) -> None:
    from structlog.testing import capture_logs

    batcher, backend = make_batcher(RecordingBackend(latency=0.1), max_batch=4, max_wait_s=0.0)
    with capture_logs() as logs:
        blocker = batcher.submit(req(seed=99, width=128), "hold")
        wait_until_started(blocker)
        items = [batcher.submit(req(seed=i), f"req-{i}") for i in range(3)]
        for item in [blocker, *items]:
            item.future.result(timeout=10)
    started = [e for e in logs if e["event"] == "batch_started"]
    finished = [e for e in logs if e["event"] == "batch_finished"]
    assert [e["request_ids"] for e in started] == [["hold"], ["req-0", "req-1", "req-2"]]
    assert (
        [e["batch_id"] for e in started] == [e["batch_id"] for e in finished] == [blocker.batch_id, items[0].batch_id]
    )
    assert all("prompt" not in e for e in logs)  # prompts are customer data
