"""``zimg inference-server``: the upstream ``POST /v1/generate`` contract, batched.

Routes: ``POST /v1/generate`` (``{"image": "<base64>"}``, or ``500 {"detail":
"CUDA out of memory ..."}``, or ``422 {"detail": [...]}`` for bad input),
``GET /v1/progress/<request_id>`` (steps done, for the worker's progress) and
``GET /healthz``. Served by waitress, a production WSGI server, on loopback
unless told otherwise. Every response names its backend in ``X-Zimg-Backend``.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from typing import Any

from flask import Flask, Response, jsonify, request

from zimg_queue.metrics import InferenceMetrics
from zimg_queue.request import GenerateRequest, ValidationError
from zimg_queue.settings import Settings
from zimg_queue.tokens import token_matches

from .backends.base import Backend, InferenceRequest, OutOfMemory
from .batcher import Batcher

log = logging.getLogger(__name__)
UPSTREAM_FORMATS = ("png", "jpeg")
MAX_BODY = 64 * 1024


def create_app(batcher: Batcher, *, max_pixels: int = 2048 * 2048, token: str | None = None) -> Flask:
    """The Flask app around a running :class:`Batcher`."""
    app = Flask("zimg-inference")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    backend: Backend = batcher.backend
    faults = getattr(backend, "fault", None)
    metrics = InferenceMetrics()

    @app.before_request
    def check_token() -> Any:
        if token and request.path != "/healthz":
            if not token_matches(request.headers.get("Authorization"), token):
                return jsonify(detail="missing or wrong bearer token"), 401
        return None

    @app.after_request
    def name_backend(resp: Response) -> Response:
        resp.headers["X-Zimg-Backend"] = backend.name
        return resp

    @app.errorhandler(413)
    def too_large(_exc: Exception) -> Any:
        return jsonify(detail=[{"loc": ["body"], "msg": f"body must be at most {MAX_BODY} bytes"}]), 413

    @app.post("/v1/generate")
    def generate() -> Any:
        body = request.get_json(silent=True)
        try:
            req = GenerateRequest.from_dict(body, max_pixels=max_pixels)
            if req.output_format not in UPSTREAM_FORMATS:
                raise ValidationError.single("output_format", "must be png or jpeg")
        except ValidationError as exc:
            detail = [{"loc": ["body", e["field"]], "msg": e["message"], "type": "value_error"} for e in exc.errors]
            return jsonify(detail=detail), 422
        fault = faults() if faults else None
        if fault == "fail":
            return jsonify(detail="injected failure (sim backend)"), 500
        arrived = time.perf_counter()
        item = batcher.submit(InferenceRequest(**req.to_dict()), request.headers.get("X-Request-Id"))
        try:
            image = item.future.result()
            metrics.observe(item.batch_size, time.perf_counter() - arrived)
        except OutOfMemory as exc:
            metrics.requests.labels("out_of_memory").inc()
            return jsonify(
                detail=str(exc) if "out of memory" in str(exc).lower() else f"CUDA out of memory: {exc}"
            ), 500
        except Exception as exc:
            metrics.requests.labels("error").inc()
            log.exception("generation failed")
            return jsonify(detail=f"generation failed: {type(exc).__name__}: {exc}"), 500
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
            "batch_size": item.batch_size,
            "queue_ms": round(((item.started or arrived) - item.arrived) * 1000, 3),
            "total_ms": round((time.perf_counter() - arrived) * 1000, 3),
        }
        if fault == "drop":
            # Promise more bytes than are sent: the server closes the connection mid-response.
            return Response(iter([b'{"image": "']), headers={"Content-Length": "1000000"}, mimetype="application/json")
        return jsonify(payload)

    @app.get("/v1/progress/<request_id>")
    def progress(request_id: str) -> Any:
        done = batcher.progress.get(request_id)
        if done is None:
            return jsonify(detail="no request in progress with that id"), 404
        return jsonify(step=done[0], steps=done[1])

    @app.get("/metrics")
    def prometheus() -> Any:
        """Batch sizes, per-request generation time and outcomes, in Prometheus' text format."""
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok", **backend.health(), batcher=batcher.snapshot())

    return app


def serve(
    settings: Settings,
    *,
    backend_name: str = "sim",
    host: str = "127.0.0.1",
    port: int = 7860,
    max_batch: int = 8,
    max_wait_ms: float = 10.0,
    threads: int | None = None,
    backend_options: dict[str, Any] | None = None,
) -> None:
    """Load the backend once, start the batcher, serve until interrupted."""
    from waitress import serve as waitress_serve

    from .backends import load

    backend = load(backend_name, **(backend_options or {}))
    batcher = Batcher(backend, max_batch=max_batch, max_wait_s=max_wait_ms / 1000)
    app = create_app(batcher, max_pixels=settings.max_pixels, token=settings.secret("inference_token"))
    log.info("inference server (%s backend) on http://%s:%d", backend.name, host, port)
    try:
        waitress_serve(app, host=host, port=port, threads=threads or max(16, 4 * max_batch), ident="zimg-inference")
    finally:
        batcher.close()
        backend.close()
