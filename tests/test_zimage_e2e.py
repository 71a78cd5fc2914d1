"""The whole service on the real ``zimage`` backend, on CPU with the tiny random-weight Z-Image pipeline.

Real processes throughout: ``zimg inference-server --backend zimage`` (offline, ``HF_HUB_OFFLINE=1``),
RQ workers, the session's redis-server, and ``zimg up``. The images are noise from random weights, but
their sizes, batching, seeding and progress behave like the real model's.
"""

from __future__ import annotations

import base64
import io
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import Proc, Processes, http_ok, wait_until
from PIL import Image

# These import torch/diffusers lazily: importing them works without the inference extra.
from workers.inference.backends.base import InferenceRequest
from workers.inference.backends.zimage import ZImageBackend
from workers.inference.batcher import Batcher
from zimg_queue.queue import Producer
from zimg_queue.redis_server import EmbeddedRedis, free_port
from zimg_queue.settings import Settings

pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
MAX_WAIT_MS = 200  # generous, so concurrent requests reliably meet in one batch on a busy 2-core machine


@pytest.fixture(scope="module")
def zimage_server(
    tiny_model: Path, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    """One real ``zimg inference-server --backend zimage`` for the module (loading it costs seconds)."""
    tmp = tmp_path_factory.mktemp("zimage-server")
    settings = Settings(redis_url=redis_server.url, inference_url=f"http://127.0.0.1:{free_port()}", data_dir=str(tmp))
    processes = Processes(settings, tmp)
    extra = ["--model", str(tiny_model), "--max-batch", "8", "--max-wait-ms", str(MAX_WAIT_MS)]
    server = processes.inference(backend="zimage", extra_args=extra, env=OFFLINE)
    yield server
    processes.stop_all()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def decode(answer: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(answer["image"])))


def stats(server: Proc) -> dict:
    return requests.get(f"{server.url}/healthz", timeout=5).json()["batcher"]


def post(server: Proc, body: dict, request_id: str | None = None) -> dict:
    headers = {"X-Request-Id": request_id} if request_id else None
    resp = requests.post(f"{server.url}/v1/generate", json=body, headers=headers, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Zimg-Backend"] == "zimage"
    return resp.json()


def test_server_reports_the_loaded_model(zimage_server: Proc, tiny_model: Path) -> None:
    health = requests.get(f"{zimage_server.url}/healthz", timeout=5).json()
    assert health["backend"] == "zimage" and health["loaded"] is True
    assert (health["model"], health["device"], health["dtype"]) == (str(tiny_model), "cpu", "float32")
    assert health["batcher"]["max_batch"] == 8


def test_full_path_producer_worker_zimage_server_file(
    zimage_server: Proc, procs: Processes, producer: Producer, zimage_backend: ZImageBackend
) -> None:
    """producer -> Redis -> 2 RQ workers -> zimage server -> PNG files of the asked sizes, batched across workers."""
    procs.worker(processes=2, zimg_inference_url=zimage_server.url)
    before = stats(zimage_server)
    asked = [(64, 64, seed) for seed in (1, 2, 3, 4)] + [(128, 64, 5), (128, 64, 6)]
    job_ids = [producer.enqueue("a lighthouse at dusk", width=w, height=h, seed=s) for w, h, s in asked]
    for job_id, (width, height, seed) in zip(job_ids, asked):
        status = producer.wait(job_id, timeout=60)
        assert status["status"] == "finished", status
        result = status["result"]
        assert result["backend"] == "zimage" and (result["width"], result["height"]) == (width, height)
        path = Path(result["path"])
        assert path.parent == Path(procs.settings.images_path).resolve()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (width, height)
            got = pixels(image)
        assert got.std() > 0  # a real picture, not a blank one
        # The file is what the model gives for that seed alone, whatever batch it ran in.
        [alone] = zimage_backend.generate(
            [InferenceRequest(prompt="a lighthouse at dusk", width=width, height=height, seed=seed)]
        )
        assert np.abs(got - pixels(alone)).max() <= 1
    after = stats(zimage_server)
    images, batches = after["images"] - before["images"], after["batches"] - before["batches"]
    assert images == len(asked)
    assert batches < images, "two workers' requests never shared a batch"


def test_concurrent_seeds_batch_and_equal_single_runs(zimage_server: Proc) -> None:
    bodies = [
        {"prompt": prompt, "width": 64, "height": 64, "seed": seed}
        for seed, prompt in [(11, "a cat"), (12, "a dog on a beach"), (13, "城市夜景"), (14, "a cat")]
    ]
    before = stats(zimage_server)
    gate = threading.Barrier(len(bodies))

    def at_once(body: dict) -> dict:
        gate.wait()
        return post(zimage_server, body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(at_once, bodies))
    alone = [post(zimage_server, body) for body in bodies]
    after = stats(zimage_server)

    assert max(a["batch_size"] for a in together) > 1, [a["batch_size"] for a in together]
    assert [a["batch_size"] for a in alone] == [1] * len(bodies)
    assert after["images"] - before["images"] == 2 * len(bodies)
    assert after["batches"] - before["batches"] < 2 * len(bodies)
    for t, a, body in zip(together, alone, bodies):
        assert t["seed"] == a["seed"] == body["seed"]
        assert decode(t).size == (64, 64)
        assert np.abs(pixels(decode(t)) - pixels(decode(a))).max() <= 1
    # Different seeds gave different images (the comparison above is not trivially true).
    assert not np.array_equal(pixels(decode(alone[0])), pixels(decode(alone[3])))


def test_per_step_progress_while_a_request_runs(zimage_server: Proc) -> None:
    """``GET /v1/progress/<id>`` shows step k of n while the request is in flight, and 404 once it is done."""
    request_id = "progress-probe"
    body = {"prompt": "slow", "width": 256, "height": 256, "seed": 1, "num_inference_steps": 50}
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post, zimage_server, body, request_id)
        seen: list[tuple[int, int]] = []
        while not answer.done():
            resp = requests.get(f"{zimage_server.url}/v1/progress/{request_id}", timeout=5)
            if resp.status_code == 200:
                seen.append((resp.json()["step"], resp.json()["steps"]))
            time.sleep(0.01)
        assert answer.result()["width"] == 256
    assert seen, "no progress was ever reported"
    assert {steps for _, steps in seen} == {50}
    assert all(1 <= step <= 50 for step, _ in seen)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert len({s for s, _ in seen}) > 1, seen  # it moved
    assert requests.get(f"{zimage_server.url}/v1/progress/{request_id}", timeout=5).status_code == 404


def test_job_meta_shows_inference_step_k_of_n(zimage_server: Proc, procs: Processes, producer: Producer) -> None:
    """The worker polls the server's progress every 0.5 s and copies it into ``job.meta["progress"]``."""
    procs.worker(zimg_inference_url=zimage_server.url)
    # 768x768 at 50 steps takes about 2.5 s on a 2-core CPU with the tiny model: several polls.
    job_id = producer.enqueue("slow lighthouse", width=768, height=768, seed=2, num_inference_steps=50)
    job = producer.fetch(job_id)
    seen: list[dict] = []
    while job.get_status(refresh=True) not in ("finished", "failed"):
        progress = job.get_meta(refresh=True).get("progress", {})
        if progress.get("stage") == "inference":
            seen.append(progress)
        time.sleep(0.02)
    assert job.get_status() == "finished"
    inference_s = producer.status(job_id)["result"]["timings"]["inference_s"]
    if not seen and inference_s < 1.0:
        pytest.skip(f"inference took {inference_s:.2f} s, too fast for the worker's 0.5 s progress poll")
    assert seen, f"the job never showed per-step progress in {inference_s:.2f} s of inference"
    assert all(p["steps"] == 50 and 1 <= p["step"] <= 50 and 10 <= p["percent"] <= 85 for p in seen)
    assert producer.status(job_id)["progress"] == {"stage": "done", "percent": 100}


def test_oom_inside_a_batch_splits_and_answers_every_request(
    zimage_backend: ZImageBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real backend under the real batcher: an OOM at 8 caps the shape at 1 (nothing had fit yet); all answered."""
    pipeline_class = type(zimage_backend._pipe)
    real_call = pipeline_class.__call__
    sizes: list[int] = []

    release = threading.Event()

    def call(self, *args, **kwargs):
        if kwargs["width"] == 128:  # the request that holds the GPU while the 8 queue up
            release.wait(30)
            return real_call(self, *args, **kwargs)
        sizes.append(len(kwargs["prompt"]))
        if len(kwargs["prompt"]) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_call(self, *args, **kwargs)

    requests_ = [InferenceRequest(prompt=f"image {i}", width=64, height=64, seed=i) for i in range(8)]
    expected = [zimage_backend.generate([r])[0] for r in requests_]
    monkeypatch.setattr(pipeline_class, "__call__", call)
    batcher = Batcher(zimage_backend, max_batch=8, max_wait_s=0.0)
    try:
        hold = batcher.submit(InferenceRequest(prompt="hold", width=128, height=64, seed=0))
        items = [batcher.submit(r, f"r{i}") for i, r in enumerate(requests_)]
        release.set()
        hold.future.result(timeout=60)
        images = [item.future.result(timeout=60) for item in items]
    finally:
        batcher.close()
    assert sizes == [8] + [1] * 8  # one failed call, not 8, 4, 4 as halving would make
    assert batcher.stats["failed_calls"] == 1 and batcher.stats["images"] == 8 + 1  # the 8 and the held one
    assert {item.batch_size for item in items} == {1}
    for image, single in zip(images, expected):
        assert image.size == (64, 64)
        assert np.abs(pixels(image) - pixels(single)).max() <= 1


def test_a_prompt_over_the_token_limit_is_422_with_its_count(zimage_server: Proc) -> None:
    resp = requests.post(f"{zimage_server.url}/v1/generate", json={"prompt": "y" * 1500, "width": 64, "height": 64})
    assert resp.status_code == 422
    [detail] = resp.json()["detail"]
    assert detail["loc"] == ["body", "prompt"] and "tokens" in detail["msg"] and "512" in detail["msg"]


def test_zimg_up_with_zimg_model_serves_a_job(
    tiny_model: Path, procs: Processes, producer: Producer, settings: Settings
) -> None:
    """``ZIMG_MODEL=<tiny dir> zimg up`` picks the zimage backend, serves a job end to end, stops on SIGINT."""
    inference_port, web_port = free_port(), free_port()
    up = procs.zimg(
        "up",
        "up",
        "--no-web",
        "--workers",
        "1",
        "--inference-port",
        str(inference_port),
        "--web-port",
        str(web_port),
        url=f"http://127.0.0.1:{inference_port}",
        env={"ZIMG_MODEL": str(tiny_model), **OFFLINE},
    )
    health = requests.get(f"{up.url}/healthz", timeout=5).json()
    assert (health["backend"], health["model"]) == ("zimage", str(tiny_model))

    status = producer.wait(producer.enqueue("a tiny harbour", width=128, height=64, seed=9), timeout=60)
    assert status["status"] == "finished", f"{status}\n--- zimg up log ---\n{up.output()[-3000:]}"
    assert status["result"]["backend"] == "zimage"
    with Image.open(status["result"]["path"]) as image:
        assert image.size == (128, 64) and image.format == "PNG"

    up.popen.send_signal(signal.SIGINT)
    assert up.popen.wait(timeout=30) == 0
    wait_until(lambda: not http_ok(f"{up.url}/healthz"), timeout=10)  # its inference server went with it


def test_the_cli_wires_the_speed_options_through_to_the_backend(
    tiny_model: Path, procs: Processes, settings: Settings
) -> None:
    """``--device cpu --dtype bf16 --attention _native_flash --warmup-sizes``: mixed caption lengths all answer."""
    port = free_port()
    extra = ["--model", str(tiny_model), "--device", "cpu", "--dtype", "bf16", "--attention", "_native_flash"]
    extra += ["--warmup-sizes", "64x64,128x64", "--max-batch", "4"]
    server = procs.zimg(
        "inference", "inference-server", "--backend", "zimage", "--port", str(port), *extra,
        url=f"http://127.0.0.1:{port}", env=OFFLINE,
    )  # fmt: skip
    health = requests.get(f"{server.url}/healthz", timeout=5).json()
    assert (health["device"], health["dtype"], health["attention"]) == ("cpu", "bfloat16", "_native_flash")
    bodies = [{"prompt": p, "width": 64, "height": 64, "seed": i} for i, p in enumerate(["a cat", "x" * 100, "a dog"])]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: post(server, b), bodies))
    assert all(decode(a).size == (64, 64) for a in answers)
    assert stats(server)["failed_calls"] == 0  # no batch ever built the mask flash attention refuses
