"""The inference server's HTTP surface: the upstream ``POST /v1/generate`` contract, batched.

Routes: ``POST /v1/generate`` (``{"image": "<base64>"}``; ``422 {"detail": [...]}`` for bad input;
``500 {"detail": "CUDA out of memory ..."}``; ``503`` + ``Retry-After`` when the queue is full or the device
failed; ``504`` when the ``X-Zimg-Deadline`` passed before the GPU got to it; ``409`` when cancelled),
``DELETE /v1/requests/<job id>`` (drop a queued request: 204, 409 once it runs, 404 when unknown),
``GET /v1/progress/<request id>``, ``GET /metrics`` and ``GET /healthz`` (503 once the device failed).
Every answer names its backend in ``X-Zimg-Backend``; an image also names its batch
(``X-Zimg-Batch-Id``, ``X-Zimg-Batch-Size``). With a token, everything but ``/healthz`` needs it.
"""

from __future__ import annotations

import base64
import io
import math
import time
from typing import Any

import structlog
from flask import Flask, Response, jsonify, request

from zimg_queue.request import UpstreamRequest, ValidationError
from zimg_queue.tokens import token_matches

from .backends.base import Backend, InferenceRequest, OutOfMemory
from .batcher import Batcher
from .errors import Rejected
from .http_input import MAX_BODY, BadBody, read_json
from .metrics import InferenceMetrics

log = structlog.get_logger(__name__)
UPSTREAM_FORMATS = ("png", "jpeg")


def _detail(field: str, message: str) -> list[dict[str, Any]]:
    """One FastAPI-shaped error: ``loc`` is ``["body"]``, ``["body", field]`` or ``["header", name]``."""
    loc = ["body"] if field == "body" else ["header", field] if field.startswith("X-") else ["body", field]
    return [{"loc": loc, "msg": message, "type": "value_error"}]


def _deadline(header: str | None) -> float | None:
    """``X-Zimg-Deadline``: unix time in seconds (a float); anything else is the client's error."""
    if header is None or not header.strip():
        return None
    try:
        value = float(header)
    except ValueError:
        raise ValidationError.single("X-Zimg-Deadline", "must be a unix time in seconds") from None
    if not math.isfinite(value):
        raise ValidationError.single("X-Zimg-Deadline", "must be a finite unix time in seconds")
    return value


def create_app(batcher: Batcher, *, max_pixels: int = 2048 * 2048, token: str | None = None) -> Flask:
    """The Flask app around a running :class:`Batcher`."""
    app = Flask("zimg-inference")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    backend: Backend = batcher.backend
    faults = getattr(backend, "fault", None)
    metrics = InferenceMetrics(lambda: batcher.depth, batcher.gpu_busy_ratio)
    batcher.runner.on_batch = metrics.observe_batch

    def answer(status: int, detail: Any, outcome: str, **headers: str) -> Response:
        metrics.requests.labels(outcome).inc()
        resp = jsonify(detail=detail)
        resp.status_code = status
        resp.headers.update(headers)
        return resp

    @app.before_request
    def check_token() -> Any:
        if token and request.path != "/healthz":
            if not token_matches(request.headers.get("Authorization"), token):
                if request.path == "/v1/generate":
                    metrics.requests.labels("4xx").inc()
                return jsonify(detail="missing or wrong bearer token"), 401, {"WWW-Authenticate": "Bearer"}
        return None

    @app.after_request
    def name_backend(resp: Response) -> Response:
        resp.headers["X-Zimg-Backend"] = backend.name
        return resp

    @app.errorhandler(413)
    def too_large(_exc: Exception) -> Any:
        return answer(413, _detail("body", f"body must be at most {MAX_BODY} bytes"), "4xx")

    @app.post("/v1/generate")
    def generate() -> Any:
        arrived = time.perf_counter()
        fault: str | None = None
        try:
            body = read_json(request)
            deadline = _deadline(request.headers.get("X-Zimg-Deadline"))
            req = UpstreamRequest.from_dict(body, max_pixels=max_pixels)  # the schema /v1/openapi.json publishes
            fault = faults() if faults else None
            if fault == "fail":
                return answer(500, "injected failure (sim backend)", "error")
            ticket = batcher.submit(
                InferenceRequest(**req.to_dict()),
                request.headers.get("X-Request-Id"),
                job_id=request.headers.get("X-Zimg-Job-Id"),
                deadline=deadline,
            )
            image = batcher.wait(ticket)
        except BadBody as exc:
            return answer(exc.status, _detail("body", exc.message), "4xx")
        except ValidationError as exc:
            return answer(422, [_detail(e["field"], e["message"])[0] for e in exc.errors], "4xx")
        except Rejected as exc:
            headers = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after else {}
            if exc.status == 503 and not headers:
                headers["Retry-After"] = "5"
            return answer(exc.status, str(exc), exc.outcome, **headers)
        except OutOfMemory as exc:
            return answer(500, str(exc), "oom")
        except Exception as exc:
            log.exception("generation_failed", request_id=request.headers.get("X-Request-Id"))
            return answer(500, f"generation failed: {type(exc).__name__}: {exc}", "error")
        metrics.observe(ticket.batch_size, time.perf_counter() - arrived)
        if fault == "slow":
            time.sleep(backend.config.slow_s)  # type: ignore[attr-defined]
        out = io.BytesIO()
        image.save(out, format="PNG" if req.output_format == "png" else "JPEG", compress_level=1)
        payload = {
            "image": "" if fault == "empty" else base64.b64encode(out.getvalue()).decode("ascii"),
            "backend": backend.name,
            "seed": req.seed,
            "width": req.width,
            "height": req.height,
            "batch_size": ticket.batch_size,
            "batch_id": ticket.batch_id,
            "queue_ms": round(((ticket.started or ticket.arrived) - ticket.arrived) * 1000, 3),
            "total_ms": round((time.perf_counter() - arrived) * 1000, 3),
        }
        if fault == "drop":
            # Promise more bytes than are sent: the server closes the connection mid-response.
            return Response(iter([b'{"image": "']), headers={"Content-Length": "1000000"}, mimetype="application/json")
        resp = jsonify(payload)
        resp.headers["X-Zimg-Batch-Id"] = ticket.batch_id or ""
        resp.headers["X-Zimg-Batch-Size"] = str(ticket.batch_size)
        return resp

    @app.delete("/v1/requests/<job_id>")
    def cancel(job_id: str) -> Any:
        outcome = batcher.cancel(job_id)
        if outcome is None:
            return jsonify(detail="no queued request with that job id"), 404
        if outcome is False:
            return jsonify(detail="the request is already on the GPU; its answer will come"), 409
        return Response(status=204)

    @app.get("/v1/openapi.json")
    def openapi() -> Any:
        """This server's OpenAPI 3.1 document, generated from :class:`UpstreamRequest` (what it validates with)."""
        from zimg_queue.web.openapi import upstream_document

        return jsonify(upstream_document())

    @app.get("/v1/progress/<request_id>")
    def progress(request_id: str) -> Any:
        done = batcher.progress.get(request_id)
        if done is None:
            return jsonify(detail="no request in progress with that id"), 404
        return jsonify(step=done[0], steps=done[1])

    @app.get("/metrics")
    def prometheus() -> Any:
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

    @app.get("/healthz")
    def healthz() -> Any:
        if batcher.fatal is not None:
            return jsonify(status="failed", error=str(batcher.fatal), backend=backend.name), 503, {"Retry-After": "30"}
        return jsonify(status="ok", **backend.health(), batcher=batcher.snapshot())

    return app
