"""The server's dynamic batching: unit tests of ``Batcher`` with a recording fake backend, then a real server.

The fake backend stands in for the GPU so the tests look at the batching logic only: which requests share
a call, how long each waited, what happens on out-of-memory and on a backend failure. Timing assertions
leave generous slack (a 2-core CI machine can stall for tens of milliseconds); they catch a request held
for seconds, not one held for 60 ms instead of 50.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests

from workers.inference.backends.base import InferenceRequest, OutOfMemory, ProgressFn
from workers.inference.batcher import Batcher, Pending

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
            raise RuntimeError("fake backend bug")
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
    batcher, backend = make_batcher(max_batch=4, max_wait_s=0.05)
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
    batcher, backend = make_batcher(max_batch=8, max_wait_s=max_wait)
    requests_ = [req(seed=i, width=64 * (1 + i % 2)) for i in range(24)]
    items = submit_concurrently(batcher, requests_, jitter=0.3)
    for item in items:
        item.future.result(timeout=10)
        held = item.started - item.arrived
        # The backend is instant, so any wait beyond max_wait would be the batcher holding the request.
        assert 0 <= held <= max_wait + SLACK, f"request held {held:.3f} s with max_wait {max_wait} s"


def test_a_lone_request_goes_after_max_wait(make_batcher) -> None:
    batcher, _ = make_batcher(max_batch=8, max_wait_s=0.2)
    item = batcher.submit(req(), "lone")
    item.future.result(timeout=10)
    held = item.started - item.arrived
    assert 0.2 - 0.02 <= held <= 0.2 + SLACK  # it waited for company, but not for ever
    assert item.batch_size == 1


def test_a_full_batch_goes_without_waiting_out_max_wait(make_batcher) -> None:
    batcher, backend = make_batcher(max_batch=4, max_wait_s=5.0)
    start = time.monotonic()
    items = [batcher.submit(req(seed=i), f"r{i}") for i in range(4)]
    for item in items:
        item.future.result(timeout=10)
    assert time.monotonic() - start < 2.0  # far less than the 5 s max_wait
    assert [len(c.batch) for c in backend.calls] == [4]
    assert {item.batch_size for item in items} == {4}


def test_requests_of_another_size_do_not_wait_for_a_full_batch(make_batcher) -> None:
    """A full batch of one key goes at once; the other key's request goes when its own wait is over."""
    batcher, backend = make_batcher(max_batch=2, max_wait_s=0.1)
    odd = batcher.submit(req(width=128), "odd")
    pair = [batcher.submit(req(seed=i), f"r{i}") for i in range(2)]
    for item in [odd, *pair]:
        item.future.result(timeout=10)
    assert sorted(len(c.batch) for c in backend.calls) == [1, 2]
    assert odd.started - odd.arrived <= 0.1 + SLACK


def test_oom_in_a_batch_of_8_splits_it_and_answers_every_request(make_batcher) -> None:
    batcher, backend = make_batcher(RecordingBackend(oom_above=2), max_batch=8, max_wait_s=5.0)
    requests_ = [req(seed=i) for i in range(8)]
    items = [batcher.submit(r, f"r{i}") for i, r in enumerate(requests_)]
    for item, request in zip(items, requests_):
        assert item.future.result(timeout=10) is request
        assert item.batch_size == 2  # the size it finally ran at
    assert [len(c.batch) for c in backend.calls] == [8, 4, 2, 2, 4, 2, 2]
    assert batcher.stats["oom_splits"] == 3
    assert batcher.stats["images"] == 8 and batcher.stats["batches"] == 4
    assert batcher.progress == {}


def test_a_single_request_that_does_not_fit_gets_out_of_memory(make_batcher) -> None:
    batcher, backend = make_batcher(RecordingBackend(oom_above=0), max_batch=8, max_wait_s=0.01)
    item = batcher.submit(req(), "big")
    with pytest.raises(OutOfMemory, match="out of memory"):
        item.future.result(timeout=10)
    assert [len(c.batch) for c in backend.calls] == [1]
    # The batcher thread survived: it still serves requests.
    backend.oom_above = None
    assert batcher.submit(req(seed=1)).future.result(timeout=10).seed == 1


def test_a_backend_error_fails_only_that_batch(make_batcher) -> None:
    backend = RecordingBackend(fail_if=lambda batch: any(r.prompt == "boom" for r in batch))
    batcher, _ = make_batcher(backend, max_batch=8, max_wait_s=0.2)
    bad = [batcher.submit(req(seed=0, prompt="boom"), "b0"), batcher.submit(req(seed=1), "b1")]
    good = [batcher.submit(req(seed=i, width=128), f"g{i}") for i in range(2)]
    for item in bad:
        with pytest.raises(RuntimeError, match="fake backend bug"):
            item.future.result(timeout=10)
    for item in good:
        assert item.future.result(timeout=10).width == 128
    assert batcher.submit(req(seed=5)).future.result(timeout=10).seed == 5  # the thread lives on
    assert batcher.progress == {}


def test_progress_is_reported_per_request_id_and_cleaned_up(make_batcher) -> None:
    batcher, backend = make_batcher(RecordingBackend(latency=0.05), max_batch=4, max_wait_s=5.0)
    items = [batcher.submit(req(seed=i, steps=4), f"job-{i}") for i in range(3)]
    items.append(batcher.submit(req(seed=3, steps=4)))  # no request id: no progress entry
    for item in items:
        item.future.result(timeout=10)
    [call] = backend.calls
    assert [seen["job-0"] for seen in call.progress_seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for seen in call.progress_seen:
        assert set(seen) == {"job-0", "job-1", "job-2"}
    assert batcher.progress == {}  # cleaned up once answered


def test_max_batch_1_means_no_batching(make_batcher) -> None:
    batcher, backend = make_batcher(max_batch=1, max_wait_s=0.5)
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
