"""The OpenAPI 3.1 document of the API, generated from the schema the code validates with.

The request body's schema is :func:`zimg_queue.request.json_schema` plus the two queue
options the API adds, so the document cannot drift from :meth:`GenerateRequest.from_dict`.
``tests/test_openapi.py`` checks the document is valid and lists exactly the app's routes.
"""

from __future__ import annotations

from typing import Any

from ..request import json_schema
from ..settings import PRIORITIES

#: Fields of ``POST /v1/jobs`` that steer the queue rather than the image.
JOB_OPTIONS = {
    "priority": {"type": "string", "enum": list(PRIORITIES), "default": "normal"},
    "idempotency_key": {
        "type": "string",
        "pattern": "^[A-Za-z0-9_-]{1,128}$",
        "description": "Becomes the job id: the same key always answers with the same job.",
    },
    "options": {
        "type": "object",
        "description": "Job options beside the request: preset, placeholders, postprocess, webhook_url, storage.",
    },
}

STATUSES = ["queued", "started", "finished", "failed", "canceled", "stopped", "deferred", "scheduled"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid input; `errors` names each bad field",
        401: "Missing or wrong bearer token",
        404: "No such job (or not finished, for the image)",
        413: "Body too large",
        429: "Rate limit reached; see Retry-After",
        503: "Redis is not answering",
    }
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


def _components() -> dict[str, Any]:
    urls = {
        "type": "object",
        "required": ["get", "image", "cancel"],
        "properties": {k: {"type": "string"} for k in ("get", "image", "cancel")},
    }
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    return {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "JobRequest": json_schema(extra=JOB_OPTIONS),
            "JobUrls": urls,
            "JobCreated": {
                "type": "object",
                "required": ["id", "status", "urls"],
                "properties": {"id": {"type": "string"}, "status": {"enum": STATUSES}, "urls": _ref("JobUrls")},
            },
            "JobStatus": {
                "type": "object",
                "required": ["id", "status", "progress", "request", "result", "error", "urls"],
                "properties": {
                    "id": {"type": "string"},
                    "status": {"enum": STATUSES},
                    "queue": {"type": "string"},
                    "progress": {
                        "type": "object",
                        "properties": {"stage": {"type": "string"}, "percent": {"type": "number"}},
                    },
                    "position": {"type": ["integer", "null"], "description": "0-based place in its queue"},
                    "request": {"type": ["object", "null"]},
                    "result": {
                        "type": ["object", "null"],
                        "properties": {
                            "path": {"type": "string"},
                            "image_url": {"type": "string"},
                            "width": {"type": "integer"},
                            "height": {"type": "integer"},
                            "seed": {"type": "integer"},
                            "format": {"type": "string"},
                            "sha256": {"type": "string"},
                            "timings": {"type": "object"},
                        },
                    },
                    "error": {"type": ["string", "null"]},
                    "attempts": {"type": "array"},
                    "created_at": nullable_time,
                    "enqueued_at": nullable_time,
                    "started_at": nullable_time,
                    "ended_at": nullable_time,
                    "urls": _ref("JobUrls"),
                },
            },
            "Queues": {
                "type": "object",
                "properties": {
                    "queues": {"type": "array", "items": {"type": "object"}},
                    "workers": {"type": "array", "items": {"type": "object"}},
                },
            },
            "Health": {"type": "object", "properties": {"status": {"enum": ["ok", "down"]}}},
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {
                    "error": {"type": "string"},
                    "message": {"type": "string"},
                    "errors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["field", "message"],
                            "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                        },
                    },
                },
            },
        },
    }


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def document(server_url: str = "/") -> dict[str, Any]:
    """The whole document; ``server_url`` is the prefix the blueprint is mounted under."""
    status = _json(_ref("JobStatus"), "The job")
    wait = {
        "name": "wait",
        "in": "query",
        "required": False,
        "description": "Hold the request up to this many seconds until the job is final",
        "schema": {"type": "number", "minimum": 0, "maximum": 60},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "zimg-queue",
            "version": "1",
            "description": f"Z-Image-Turbo text-to-image jobs on RQ queues ({', '.join(PRIORITIES)} priority).",
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "paths": {
            "/v1/jobs": {
                "post": {
                    "operationId": "createJob",
                    "summary": "Enqueue an image job",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("JobRequest")}}},
                    "responses": {"202": _json(_ref("JobCreated"), "Enqueued"), **_errors(400, 401, 413, 429, 503)},
                }
            },
            "/v1/jobs/{job_id}": {
                "parameters": [JOB_ID],
                "get": {
                    "operationId": "getJob",
                    "summary": "A job's status, progress and result",
                    "parameters": [wait],
                    "responses": {"200": status, **_errors(400, 401, 404)},
                },
                "delete": {
                    "operationId": "deleteJob",
                    "summary": "Cancel a job (queued: never runs; started: stopped)",
                    "responses": {"200": status, **_errors(401, 404)},
                },
            },
            "/v1/jobs/{job_id}/cancel": {
                "parameters": [JOB_ID],
                "post": {
                    "operationId": "cancelJob",
                    "summary": "Cancel a job (same as DELETE)",
                    "responses": {"200": status, **_errors(401, 404)},
                },
            },
            "/v1/jobs/{job_id}/image": {
                "parameters": [JOB_ID],
                "get": {
                    "operationId": "getImage",
                    "summary": "The finished job's image",
                    "responses": {
                        "200": {
                            "description": "The image",
                            "content": {f"image/{f}": {} for f in ("png", "jpeg", "webp")},
                        },
                        "302": {"description": "ZIMG_STORAGE=s3: the image in the bucket (presigned or public URL)"},
                        **_errors(401, 404),
                    },
                },
            },
            "/v1/queues": {
                "get": {
                    "operationId": "getQueues",
                    "summary": "Queue depths, registry counts and workers",
                    "responses": {"200": _json(_ref("Queues"), "Queues"), **_errors(401)},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Redis, inference server and workers (no token needed)",
                    "security": [],
                    "responses": {"200": _json(_ref("Health"), "All up"), "503": _json(_ref("Health"), "Down")},
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1 document"}, **_errors(401)},
                }
            },
        },
        "components": _components(),
    }
