"""The RQ job: one generate request in, one image file and a result dict out.

``generate`` runs inside an RQ worker. Its settings, HTTP session and image store
are built once per process (:func:`context`), not per job. Progress goes into
``job.meta["progress"]`` at each stage, so it shows in the status API and in
rq-dashboard; each failed attempt is appended to ``job.meta["attempts"]``.

An unreachable or busy inference server is not a failed attempt: the job trips the
shared breaker (:mod:`workers.outage`) and goes back to the front of its queue.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import redis
from rq import get_current_job
from rq.job import Job

from zimg_queue.options import JobOptions
from zimg_queue.queue import JOB_FUNC
from zimg_queue.request import GenerateRequest, ValidationError
from zimg_queue.settings import Settings
from zimg_queue.status import now_iso

from .client import GenerateResponse, InferenceClient
from .errors import BadOptions, GenerateError, InferenceDown, InferenceOutage, InferenceOutOfMemory, JobStopped
from .imaging import decode, encode, format_of
from .inference_pool import InferencePool, inference_client
from .outage import AwaitInference, Breaker
from .result_writes import RESULT_WRITES
from .storage import ImageStore

#: Set by the worker when RQ asks it to stop the job it is running (see ``workers.worker``).
STOP = threading.Event()
#: How often a long-running job asks the inference server for its step progress.
PROGRESS_POLL_S = 0.5
#: A call still running after this long shows ``waiting_for_inference``; a faster one writes no progress of its own.
FIRST_PROGRESS_S = 0.05
UPSTREAM_FORMATS = ("png", "jpeg")


@dataclass
class Context:
    settings: Settings
    client: InferenceClient | InferencePool
    store: ImageStore
    outage: Breaker | None = None

    def breaker(self, connection: redis.Redis) -> Breaker:
        """The process's one breaker: the worker (waiting) and its jobs (tripping, closing) share its state."""
        if self.outage is None:
            self.outage = Breaker(connection, self.settings.outage_budget, self.settings.inference_url)
        return self.outage


@lru_cache(maxsize=1)
def context() -> Context:
    """Per-process state, built on the first job and reused by every later one."""
    s = Settings.from_env()
    # A comma list of URLs (one server per GPU or host) gets a pool that fails over (workers.inference_pool).
    client = inference_client(
        s.inference_url,
        connect_timeout=s.connect_timeout,
        read_timeout=s.read_timeout,
        token=s.secret("inference_token"),
    )
    return Context(s, client, ImageStore(s.images_path))


class _DaemonCalls:
    """Runs calls on long-lived *daemon* threads; a call that finds no idle thread starts one.

    Not a ``ThreadPoolExecutor``: Python joins a pool's threads at exit, so a stopped job's
    HTTP call still waiting on a long generation would hold a stopping worker until it
    answered. Not a new thread per call either: starting one costs about 1 ms on a busy box.
    """

    def __init__(self) -> None:
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.idle = 0
        self.lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self.lock:
            spawn = self.idle == 0
            if not spawn:
                self.idle -= 1
        self.tasks.put((future, fn, args, kwargs))
        if spawn:
            threading.Thread(target=self._serve, name="inference-call", daemon=True).start()
        return future

    def _serve(self) -> None:
        while True:
            future, fn, args, kwargs = self.tasks.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # handed to the waiting job, which re-raises it
                    future.set_exception(exc)
            with self.lock:
                self.idle += 1


_calls = _DaemonCalls()


def in_background(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """Run ``fn`` on a daemon thread (see :class:`_DaemonCalls`); its result arrives in the returned future."""
    return _calls.submit(fn, *args, **kwargs)


def set_progress(job: Job | None, stage: str, percent: int, **extra: Any) -> None:
    if job is None:
        return
    job.meta["progress"] = {"stage": stage, "percent": percent, **extra}
    job.save_meta()


def set_final_progress(job: Job | None, stage: str, percent: int) -> None:
    """The last progress of a job that returns: written with its result (:mod:`workers.result_writes`).

    A client sees both at once, and waits for one round trip fewer.
    """
    if job is None:
        return
    job.meta["progress"] = {"stage": stage, "percent": percent}
    meta = job.serializer.dumps(job.meta)
    RESULT_WRITES.add(job.connection, lambda pipe: pipe.hset(job.key, "meta", meta))


@dataclass
class EarlyCall:
    """An inference call the worker sent before the job function ran (:func:`call_early`)."""

    job_id: str
    request: GenerateRequest  # the call is used only for exactly this request
    future: Future
    sent: float  # time.perf_counter() when it was sent


#: The one early call of this process (a worker runs one job at a time), until the job takes it.
_early: EarlyCall | None = None


def call_early(job: Job) -> None:
    """Send ``job``'s inference call now, before the worker's start transaction, when the call is its first step.

    Why: the worker writes the start transaction (one round trip, and building it) between the dequeue
    and the job function; sent first, the call runs on the server meanwhile instead of after it
    (issue 14 point 8). Only when nothing comes before the call in :func:`generate`: not for a request
    the image folder already answers, a watermark to check or an object store to look in first. Anything
    unexpected here sends nothing: the job then runs exactly as it would have.
    """
    global _early
    _early = None
    try:
        if job.func_name != JOB_FUNC or not job.args or len(job.args) > 2 or job.kwargs:
            return  # (reading these deserializes the job: a payload RQ cannot read raises, and RQ fails the job)
        ctx = context()
        req = GenerateRequest.from_dict(job.args[0], max_pixels=ctx.settings.max_pixels)
        opts = JobOptions.from_dict(job.args[1] if len(job.args) > 1 else None)
        if opts.postprocess is not None and opts.postprocess.watermark is not None:
            return
        if object_store_for(opts.storage or ctx.settings.storage) is not None:
            return
        if ctx.store.find(req.key, req.output_format) is not None:
            return
        sent = time.perf_counter()
        future = _send(job, ctx, req)
    except Exception:  # the job function meets the same problem and reports it properly
        return
    _early = EarlyCall(job.id, req, future, sent)


def drop_early_call(job: Job) -> None:
    """After ``job``: an early call it never took (it failed before its call) is withdrawn from the server."""
    global _early
    early, _early = _early, None
    if early is not None and early.job_id == job.id:
        early.future.cancel()
        in_background(context().client.cancel, job.id)


def _take_early_call(job: Job | None, req: GenerateRequest) -> EarlyCall | None:
    global _early
    early, _early = _early, None
    if early is None or job is None or early.job_id != job.id or early.request != req:
        return None
    return early


def generate(request: dict[str, Any], options: dict[str, Any] | None = None) -> dict[str, Any] | AwaitInference:
    """Make (or find) the image for ``request``, post-process and store it as ``options`` say; return where it is.

    ``options`` is a :class:`zimg_queue.options.JobOptions` dict (post-processing, storage,
    webhook); the preset was already expanded into ``request`` by the producer. Returns
    :class:`AwaitInference` (RQ: run me again) while the inference server is down.
    """
    job = get_current_job()
    started = time.time()
    ctx = context()
    req = GenerateRequest.from_dict(request, max_pixels=ctx.settings.max_pixels)
    try:
        opts = JobOptions.from_dict(options)
        # What comes before the inference call here, call_early checks too (it sends the call only without it).
        if opts.postprocess is not None and opts.postprocess.watermark is not None:
            from .postprocess import load_watermark

            load_watermark(opts.postprocess.watermark)  # before any GPU time is spent (by content or by name)
        remote = object_store_for(opts.storage or ctx.settings.storage)
        if remote is not None:
            remote.fetch_into(ctx.store, req.key, req.output_format)  # another host may have made it already
        result = _generate(job, ctx, req, started)
        result["files"] = [_original_entry(result)]
        if opts.postprocess is not None and not opts.postprocess.empty:
            set_progress(job, "postprocessing", 95)
            result = _postprocess(ctx, result, opts)
        if remote is not None:
            set_progress(job, "uploading", 97)
            remote.publish(result)
        set_final_progress(job, "done", 100)
        return result
    except InferenceDown as exc:  # before GenerateError: an outage is waited out, not a spent attempt
        return _await_inference(job, ctx, exc)
    except ValidationError as exc:  # e.g. a watermark name the operator has not configured: retrying cannot help
        bad = BadOptions(str(exc))
        _record_attempt(job, bad)
        if job is not None:
            job.retries_left = 0
        raise bad from None
    except GenerateError as exc:
        _record_attempt(job, exc)
        if job is not None and not exc.transient:
            job.retries_left = 0  # a retry cannot help: fail now
        raise
    except OSError as exc:  # disk full, read-only image folder: worth a retry later, and worth showing
        _record_attempt(job, exc)
        raise


def _generate(job: Job | None, ctx: Context, req: GenerateRequest, started: float) -> dict[str, Any]:
    queued_s = (started - job.enqueued_at.timestamp()) if job is not None and job.enqueued_at else 0.0
    cached = ctx.store.find(req.key, req.output_format)
    if cached is not None:
        data = cached.read_bytes()
        timings = {"queued_s": round(queued_s, 4), "inference_s": 0.0, "total_s": round(time.time() - started, 4)}
        return _result(req, str(cached), data, timings, backend=None, cache_hit=True)

    effective, downscaled = req, None
    early = _take_early_call(job, req)
    t0 = early.sent if early is not None else time.perf_counter()
    try:
        response = _call(job, ctx, effective, {}, sent=early.future if early is not None else None)
    except InferenceOutOfMemory:
        smaller = downscale(req)
        if not ctx.settings.oom_downscale or smaller is None:
            raise
        effective, downscaled = smaller, {"from": [req.width, req.height], "to": [smaller.width, smaller.height]}
        response = _call(job, ctx, effective, {"downscaled": True})
    inference_s = time.perf_counter() - t0

    raw, image = decode(response.image_b64, effective.width, effective.height)
    data = raw if format_of(image) == req.output_format else encode(image, req.output_format)
    path = ctx.store.write(effective.key, req.output_format, data)
    timings = {
        "queued_s": round(queued_s, 4),
        "inference_s": round(inference_s, 4),
        "total_s": round(time.time() - started, 4),
    }
    result = _result(effective, str(path), data, timings, backend=response.backend, cache_hit=False)
    result["batch_size"] = response.batch_size
    if downscaled:
        result["downscaled"] = downscaled
    return result


#: The fields that describe one image file in a result and in its ``files`` list.
FILE_FIELDS = ("path", "format", "width", "height", "bytes", "sha256")


def _original_entry(result: dict[str, Any]) -> dict[str, Any]:
    return {"role": "original", "key": result["request_key"], **{k: result[k] for k in FILE_FIELDS}}


def _postprocess(ctx: Context, result: dict[str, Any], opts: JobOptions) -> dict[str, Any]:
    """Watermark / convert / thumbnail the original; ``path`` and friends then describe the final image."""
    from PIL import Image

    from .postprocess import apply

    assert opts.postprocess is not None
    with Image.open(result["path"]) as original:
        original.load()
        files = apply(original, result["request_key"], result["format"], opts.postprocess, ctx.store)
    final = files[0]
    described = {k: final[k] for k in FILE_FIELDS}
    return {**result, **described, "original_path": result["path"], "files": files + result["files"]}


def object_store_for(storage: str | None):
    """The S3 store when ``storage`` (or ``$ZIMG_STORAGE``) says ``s3``, else ``None`` (local folder only).

    Callers in a worker pass their process's setting: reading the settings again costs ~5 ms a job.
    """
    if (storage or Settings().storage).lower() != "s3":
        return None
    from .object_store import default_store

    return default_store()


def _result(req: GenerateRequest, path: str, data: bytes, timings: dict, *, backend: str | None, cache_hit: bool):
    return {
        "path": path,
        "width": req.width,
        "height": req.height,
        "seed": req.seed,
        "format": req.output_format,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "request_key": req.key,
        "backend": backend,
        "cache_hit": cache_hit,
        "timings": timings,
        **timings,
    }


def _send(job: Job | None, ctx: Context, req: GenerateRequest) -> Future:
    """``POST /v1/generate`` for ``req`` on a helper thread; the answer arrives in the returned future."""
    body = req.to_dict()
    if body["output_format"] not in UPSTREAM_FORMATS:
        body["output_format"] = "png"  # converted with Pillow after
    job_id = job.id if job is not None else None
    request_id = (job.meta.get("request_id") if job is not None else None) or job_id
    return in_background(ctx.client.generate, body, request_id=request_id, job_id=job_id)


def _call(
    job: Job | None, ctx: Context, req: GenerateRequest, progress: dict[str, Any], *, sent: Future | None = None
) -> GenerateResponse:
    """POST the request; meanwhile watch for a stop request and copy step progress into the job.

    The HTTP call runs on a helper thread so this thread stays free to notice a
    cancel; a fast answer (the common case) never pays for a progress poll. The
    ``waiting_for_inference`` progress (with ``progress``'s extra fields) is written
    only once the call has run :data:`FIRST_PROGRESS_S`: a client polling a GPU job
    sees it a moment later, and a call that answers sooner (a small image, a warm
    batch) is not slowed by a write racing it for the CPU and the GIL (measured with
    ``python -m benchmarks.compare_refs``: see the README's Performance section). ``sent``: the call,
    already sent (:func:`call_early`).
    """
    job_id = job.id if job is not None else None
    request_id = (job.meta.get("request_id") if job is not None else None) or job_id
    future = sent if sent is not None else _send(job, ctx, req)
    shown, last_step = False, None
    while True:
        if STOP.is_set():
            future.cancel()
            if job_id:  # best effort, off this thread: the server drops the request if it has not run yet
                in_background(ctx.client.cancel, job_id)
            raise JobStopped("job was stopped while waiting for the inference server")
        try:
            response = future.result(timeout=PROGRESS_POLL_S if shown else FIRST_PROGRESS_S)
        except FutureTimeout:
            pass
        else:
            if job is not None:
                ctx.breaker(job.connection).close()  # no-op unless this process saw an outage
            return response
        if not shown:
            shown = True
            set_progress(job, "waiting_for_inference", 5, **progress)
            continue
        step = ctx.client.progress(request_id) if request_id else None
        if step and step.get("step") != last_step and step.get("steps"):
            last_step = step["step"]
            percent = 10 + int(75 * step["step"] / step["steps"])
            set_progress(job, "inference", percent, step=step["step"], steps=step["steps"])


def downscale(req: GenerateRequest, factor: float = 0.75) -> GenerateRequest | None:
    """The same request with each side about ``factor`` as long, multiples of 64, aspect ratio kept."""
    width = max(64, int(req.width * factor) // 64 * 64)
    height = max(64, round(width * req.height / req.width / 64) * 64)
    if (width, height) == (req.width, req.height) or width * height >= req.width * req.height:
        return None
    return replace(req, width=width, height=height)


def _await_inference(job: Job | None, ctx: Context, exc: InferenceDown) -> AwaitInference:
    """The server is down or busy: trip the shared breaker and go back to the queue, or fail past the budget."""
    if job is None:
        raise exc
    outage = ctx.breaker(job.connection).trip(exc)
    budget = ctx.settings.outage_budget
    if budget <= 0 or outage.down_for > budget:
        failed = InferenceOutage(
            f"the inference server was down for {outage.down_for:.0f} s (since {outage.since_iso}), longer than "
            f"the outage budget ZIMG_OUTAGE_BUDGET={budget:g} s; last error: {exc}"
        )
        _record_attempt(job, failed)
        job.retries_left = 0
        raise failed from None
    set_progress(
        job,
        "waiting_for_inference_server",
        0,
        since=outage.since_iso,
        detail=f"the inference server is unavailable ({exc}); this job waits for it (no retry spent) "
        f"for up to {budget:g} s of outage",
    )
    return AwaitInference()


def _record_attempt(job: Job | None, exc: Exception) -> None:
    if job is not None:
        record_attempt(job, f"{type(exc).__name__}: {exc}")


def add_attempt(job: Job, error: str) -> None:
    """Append one failed attempt to ``job.meta["attempts"]`` (what the status API shows), in memory only."""
    attempts = job.meta.setdefault("attempts", [])
    attempts.append({"attempt": len(attempts) + 1, "error": error, "at": now_iso()})


def record_attempt(job: Job, error: str) -> None:
    """:func:`add_attempt`, saved at once."""
    add_attempt(job, error)
    job.save_meta()
