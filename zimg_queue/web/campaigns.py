"""Campaign status and Prometheus metrics over HTTP: ``GET /v1/campaigns/<name>`` and ``GET /metrics``.

A separate blueprint so the API blueprint stays about single jobs. Both routes only
read Redis: the campaign plan saved by :mod:`zimg_queue.campaign` and RQ's own keys
(see :mod:`zimg_queue.metrics` for why metrics are collected from Redis at scrape time).
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, Response, jsonify, request
from rq.exceptions import NoSuchJobError

from .. import campaign
from ..metrics import exposition
from ..request import ValidationError
from .auth import guard
from .body import ApiError
from .extension import get_state

bp = Blueprint("zimg_campaigns", __name__)
bp.before_request(guard(lambda: get_state().settings.secret("api_token")))


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return exc.response()


@bp.errorhandler(redis.exceptions.RedisError)
def _redis_down(exc: redis.exceptions.RedisError) -> Response:
    return ApiError(503, "unavailable", "the job store (Redis) is not answering; try again shortly").response()


@bp.get("/v1/campaigns/<name>")
def get_campaign(name: str) -> Any:
    """Progress counts, and one row per job (item, preset, job id, status, path/url, error) unless ``?rows=0``."""
    state = get_state()
    conn = state.producer.connection
    try:
        if request.args.get("rows", "1") in ("0", "false", "no"):
            return jsonify(campaign.progress(conn, name))
        data = campaign.manifest(conn, name)
        return jsonify({**campaign.progress(conn, name), **data})
    except ValidationError as exc:
        raise ApiError(400, "validation_error", str(exc)) from None
    except NoSuchJobError:
        raise ApiError(404, "not_found", f"no campaign named {name!r} (or it has expired)") from None


@bp.get("/metrics")
def metrics() -> Response:
    state = get_state()
    body, content_type = exposition(state.producer.connection, state.settings.queue_names)
    return Response(body, content_type=content_type)
