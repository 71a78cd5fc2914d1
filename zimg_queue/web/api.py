"""The HTTP API: a Flask blueprint any app can register under its own prefix.

Every route is a thin layer over :class:`zimg_queue.queue.Producer` and
:func:`zimg_queue.status.job_status`: validation, idempotency, waiting and cancelling
are the producer's, so the API, the CLI and a Flask view can never disagree.
Every answer, errors included, is JSON; client input never produces a 5xx.
"""

from __future__ import annotations

import math
import mimetypes
from pathlib import Path
from typing import Any

import redis
from flask import Blueprint, Response, jsonify, request, send_file, url_for
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.worker import Worker
from rq.worker_registration import get_keys
from werkzeug.exceptions import HTTPException

from workers.inference_pool import servers_health

from ..idempotency import IdempotencyConflict
from ..queue import JOB_ID_RE
from ..request import ValidationError
from ..settings import PRIORITIES
from .auth import guard
from .body import ApiError, read_json_object, take_submission
from .extension import WebState, get_state
from .origin import check_origin, require_json
from .telemetry import job_meta
from .transport import check_request_body

bp = Blueprint("zimg_queue", __name__)
bp.before_request(guard(lambda: get_state().settings.secret("api_token")))
bp.before_request(check_origin)  # after the token check: a 401 never reads the body
bp.before_request(check_request_body)

MAX_WAIT_S = 60.0
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@bp.record_once
def _build_state(setup) -> None:
    """Registering the blueprint alone (without ``ZimgQueue``) still gives it its settings."""
    get_state(setup.app)


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return exc.response()


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    code = (exc.name or "error").lower().replace(" ", "_")
    keep = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after", "www-authenticate")}
    return ApiError(exc.code or 500, code, exc.description or exc.name, headers=keep).response()


@bp.errorhandler(redis.exceptions.RedisError)
def _redis_down(exc: redis.exceptions.RedisError) -> Response:
    return ApiError(503, "unavailable", "the job store (Redis) is not answering; try again shortly").response()


def urls(job_id: str) -> dict[str, str]:
    """The job's URLs under wherever the blueprint is mounted (one ``url_for``: ids need no quoting)."""
    get = url_for(f"{bp.name}.get_job", job_id=job_id)  # by full name: the console's image route calls this too
    return {"get": get, "image": f"{get}/image", "cancel": f"{get}/cancel"}


def _existing_key(state: WebState, key: Any) -> bool:
    """Whether ``key`` is a valid idempotency key naming a job that already exists."""
    if not isinstance(key, str) or not JOB_ID_RE.match(key):
        return False
    return bool(state.producer.connection.exists(Job.key_for(key)))


def _client_id() -> str:
    return request.remote_addr or "unknown"


def _rate_limit(state: WebState) -> dict[str, str]:
    if not state.limiter.enabled:
        return {}
    allowed, remaining, reset = state.limiter.hit(_client_id())
    headers = {"X-RateLimit-Limit": str(state.limiter.rate), "X-RateLimit-Remaining": str(remaining)}
    if not allowed:
        message = f"at most {state.limiter.rate} jobs per {state.limiter.window} s per client; retry in {reset} s"
        raise ApiError(429, "rate_limited", message, headers={**headers, "Retry-After": str(reset)}, retry_after=reset)
    return headers


@bp.post("/v1/jobs")
def create_job() -> tuple[Response, int, dict[str, str]]:
    """Validate and enqueue; 202 with the job's id and URLs."""
    state = get_state()
    require_json()  # 415: a cross-site form or text/plain post never gets this far
    data = read_json_object(request, state.limits.max_body_bytes)
    # Re-sending a job that exists (same idempotency key) creates nothing, so it is not counted.
    headers = {} if _existing_key(state, data.get("idempotency_key")) else _rate_limit(state)
    priority, key, errors = take_submission(data)  # the JobSubmission model: what the OpenAPI document publishes
    options = data.pop("options", None)
    req = job_opts = None
    try:  # the producer's own validation (presets and options included), run before anything is enqueued
        req, job_opts = state.producer.prepare(data, options)
    except ValidationError as exc:
        errors.extend(exc.errors)
    if req is not None:
        try:
            state.limits.check_prompt(req.prompt)
        except ValidationError as exc:
            errors.extend(exc.errors)
    if errors or req is None or job_opts is None:
        raise ApiError.invalid(ValidationError(errors))
    try:
        job_id = state.producer.enqueue_prepared(
            req, job_opts, job_id=key, priority=priority, meta=job_meta(), seed_given=data.get("seed") is not None
        )
    except IdempotencyConflict as exc:  # the IETF Idempotency-Key draft's answer: 409, naming the job
        raise ApiError(409, "idempotency_conflict", str(exc).replace("job_id", "idempotency_key"), id=exc.job_id,
                       urls=urls(exc.job_id)) from None  # fmt: skip
    status = "queued"
    if key is not None:  # maybe an earlier job with this key: answer with its real status
        raw = state.producer.connection.hget(Job.key_for(job_id), "status")
        status = (raw.decode() if isinstance(raw, bytes) else str(raw)) if raw else status
    links = urls(job_id)
    headers["Location"] = links["get"]
    return jsonify(id=job_id, status=status, urls=links), 202, headers


def _parse_wait(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait) or not 0 <= wait <= MAX_WAIT_S:
        raise ApiError.field("wait", f"must be a number of seconds from 0 to {MAX_WAIT_S:g} (got {raw[:40]!r})")
    return wait


def load_status(job_id: str, wait: float = 0.0) -> dict[str, Any]:
    """The job's status (after waiting up to ``wait`` s for a final state), or a 404 ApiError."""
    producer = get_state().producer
    try:
        status = producer.wait(job_id, timeout=wait) if wait > 0 else producer.status(job_id)
    except (ValidationError, NoSuchJobError):
        raise ApiError(404, "not_found", "no such job (it never existed or its results have expired)") from None
    status["urls"] = urls(job_id)
    if isinstance(status.get("result"), dict):
        status["result"]["image_url"] = status["urls"]["image"]
    return status


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """Status, progress, queue position, result; ``?wait=N`` holds until final or N s."""
    return jsonify(load_status(job_id, _parse_wait(request.args.get("wait"))))


@bp.get("/v1/jobs/<job_id>/events")
def job_events(job_id: str) -> Response:
    """Status and progress changes as server-sent events until the job is final (:mod:`.events`)."""
    from .events import stream

    return stream(lambda: load_status(job_id))


@bp.get("/v1/jobs/<job_id>/image")
def get_image(job_id: str) -> Response:
    """The image bytes, found through the job's result only, and only inside the image store."""
    from workers.storage import ImageStore

    status = load_status(job_id)
    result = status.get("result")
    if status["status"] != "finished" or not isinstance(result, dict):
        raise ApiError(404, "not_ready", f"job is {status['status']}, not finished", status=status["status"])
    path = result.get("path")
    if not isinstance(path, str) or not ImageStore(get_state().images_path).owns(path):
        from .bucket import bucket_redirect  # S3 mode: the file is on a GPU host, the object in the bucket

        found = bucket_redirect(result, get_state().settings)
        if found is not None:
            return found
        raise ApiError(404, "image_missing", _missing_image(path, get_state().images_path))
    mimetype = CONTENT_TYPES.get(str(result.get("format"))) or mimetypes.guess_type(path)[0]
    response = send_file(path, mimetype=mimetype or "application/octet-stream", conditional=True, max_age=86400)
    response.headers["Cache-Control"] = "private, max-age=86400, immutable"  # content-addressed files
    return response


def _missing_image(path: object, images: Path) -> str:
    """Say where the image was looked for, so an operator can tell a deleted file from two image folders."""
    root = images.resolve()
    if not isinstance(path, str):
        return "the job's result names no image file"
    if Path(path).parent != root:
        return (f"the job's image {path} is outside this service's image folder {root}: the worker and the web "
                "service use different ZIMG_IMAGE_DIR / ZIMG_DATA_DIR")  # fmt: skip
    return f"the job's image is no longer stored: looked for {path}"


@bp.route("/v1/jobs/<job_id>", methods=["DELETE"])
@bp.post("/v1/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    """A queued job never runs; a started job is stopped. Answers with the job's status."""
    load_status(job_id)  # 404 for unknown ids
    status = get_state().producer.cancel(job_id)
    status["urls"] = urls(job_id)
    return jsonify(status)


@bp.get("/v1/queues")
def queues() -> Response:
    """Depth and registry counts of each priority queue, and the workers serving them."""
    producer = get_state().producer
    out, workers = [], {}
    for priority in PRIORITIES:
        q = producer.queue(priority)
        out.append(
            {
                "name": q.name,
                "priority": priority,
                "queued": q.count,
                "started": q.started_job_registry.get_job_count(cleanup=False),
                "finished": q.finished_job_registry.get_job_count(cleanup=False),
                "failed": q.failed_job_registry.get_job_count(cleanup=False),
                "deferred": q.deferred_job_registry.get_job_count(cleanup=False),
                "scheduled": q.scheduled_job_registry.get_job_count(cleanup=False),
                "canceled": q.canceled_job_registry.get_job_count(cleanup=False),
            }
        )
        for w in Worker.all(queue=q):
            workers[w.name] = {
                "name": w.name,
                "state": str(w.get_state()),
                "queues": w.queue_names(),
                "current_job": w.get_current_job_id(),
            }
    from ..capacity import estimate  # per queue: jobs waiting, workers ready, estimated wait (for autoscalers)

    for entry, capacity in zip(out, estimate(producer.connection, [q["name"] for q in out]), strict=True):
        entry.update(capacity.as_json())
    return jsonify(queues=out, workers=sorted(workers.values(), key=lambda w: w["name"]))


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Redis, the inference server and the worker count; 503 when any is down. Needs no token."""
    state = get_state()
    checks: dict[str, Any] = {}
    try:
        checks["redis"] = {"ok": bool(state.probe.ping())}
    except (redis.exceptions.RedisError, OSError) as exc:
        checks["redis"] = {"ok": False, "error": type(exc).__name__}
    checks["inference"] = servers_health(state.settings.inference_url)  # one URL, or one per GPU / host
    workers = 0
    if checks["redis"]["ok"]:
        keys: set = set()
        for priority in PRIORITIES:
            keys |= get_keys(queue=state.producer.queue(priority))
        workers = len(keys)
    checks["workers"] = {"ok": workers > 0, "count": workers}
    ok = all(c["ok"] for c in checks.values())
    return jsonify(status="ok" if ok else "down", **checks), 200 if ok else 503


@bp.get("/v1/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document of the routes this app serves, generated from the models the code validates with."""
    from flask import current_app

    from .openapi import for_app

    prefix = url_for(".create_job")[: -len("/v1/jobs")]
    return jsonify(for_app(current_app, prefix, get_state().producer.presets_path))
