"""The OpenAPI 3.1 document of ``zimg web``, generated from the models the code validates with.

Schemas come from pydantic (:mod:`zimg_queue.request`, :mod:`zimg_queue.options`,
:mod:`zimg_queue.models`); nothing here restates a field rule. The one schema written here
is ``JobRequest`` (the body of ``POST /v1/jobs``), and it is assembled from the request's and
the submission's properties. The document describes *this* server: the names of the presets
and watermarks it has configured become ``enum`` s, and only the routes the app serves are
listed (``tests/test_openapi.py`` walks the url_map and fails on a route missing here).

To document a new route, add one entry to :data:`OPERATIONS` (path in OpenAPI's ``{name}``
form, method, operation), using :func:`op` and the response helpers.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

from flask import Flask
from pydantic import TypeAdapter

from .. import models
from ..options import JobOptions
from ..request import FORMATS, GenerateRequest, UpstreamRequest
from ..settings import PRIORITIES, Settings

Json = dict[str, Any]
#: Answers every protected route can give besides its own.
AUTH = (401,)
REF = "#/components/schemas/{model}"
#: Every model whose schema the document carries, by component name (pydantic names them by class).
MODELS: dict[str, Any] = {
    "GenerateRequest": GenerateRequest,
    "JobOptions": JobOptions,
    "JobSubmission": models.JobSubmission,
    "JobCreated": models.JobCreated,
    "JobStatus": models.JobStatus,
    "JobState": models.JobState,
    "JobResult": models.JobResult,
    "ErrorBody": models.ErrorBody,
    "Health": models.Health,
    "Queues": models.Queues,
}


def ref(name: str) -> Json:
    return {"$ref": REF.format(model=name)}


def _header(description: str, schema: Json | None = None) -> Json:
    return {"description": description, "schema": schema or {"type": "string"}}


HEADERS: Json = {
    "Retry-After": _header("Seconds to wait before trying again", {"type": "integer", "minimum": 0}),
    "X-RateLimit-Limit": _header("Job creations allowed per window (ZIMG_RATE_LIMIT)", {"type": "integer"}),
    "X-RateLimit-Remaining": _header("Job creations left in this window", {"type": "integer"}),
    "Location": _header("The new job's URL"),
    "WWW-Authenticate": _header("Bearer (programs) or Basic (browsers: any user name, the token as password)"),
    "X-Request-Id": _header("The request's id: the one sent, or a new one; logged and stored with the job"),
}


def _headers(*names: str) -> Json:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


RATE_HEADERS = ("Retry-After", "X-RateLimit-Limit")
#: What each error status means on this API, and the headers it carries.
ERRORS: dict[int, tuple[str, tuple[str, ...]]] = {
    400: ("Invalid input: `errors` names each bad field and rule (a body that is not a JSON object: `body`)", ()),
    401: ("Missing or wrong token (ZIMG_API_TOKEN)", ("WWW-Authenticate",)),
    403: ("A state-changing request from a foreign site (Origin) without a bearer token", ()),
    404: ("No such job (never existed, malformed id, or expired)", ()),
    408: ("The body did not arrive within ZIMG_WEB_BODY_TIMEOUT (answered before the app, by the server)", ()),
    409: ("The idempotency_key is already the id of a job with another body; `id` names that job", ()),
    413: ("Body larger than ZIMG_MAX_BODY_BYTES", ()),
    415: ("Content-Type is not application/json (or a Content-Encoding is not identity)", ()),
    429: ("Rate limit reached (ZIMG_RATE_LIMIT); retry after Retry-After seconds", RATE_HEADERS),
    503: ("The job store (Redis) is not answering; try again shortly", ()),
}


def errors(*codes: int) -> Json:
    """``responses`` entries for error ``codes``, each an :class:`~zimg_queue.models.ErrorBody`."""
    out: Json = {}
    for code in codes:
        description, headers = ERRORS[code]
        entry: Json = {"description": description, "content": {"application/json": {"schema": ref("ErrorBody")}}}
        if headers:
            entry["headers"] = _headers(*headers)
        out[str(code)] = entry
    return out


def answer(model: str, description: str, *headers: str) -> Json:
    entry: Json = {"description": description, "content": {"application/json": {"schema": ref(model)}}}
    if headers:
        entry["headers"] = _headers(*headers)
    return entry


def op(operation_id: str, summary: str, responses: Json, *, public: bool = False, **more: Any) -> Json:
    """One operation; a protected one (the default) also answers 401."""
    out: Json = {"operationId": operation_id, "summary": summary, **more}
    out["responses"] = {**responses, **({} if public else errors(*AUTH))}
    if public:
        out["security"] = []
    return out


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "Hold the request up to this many seconds until the job is final",
    "schema": {"type": "number", "minimum": 0, "maximum": 60},
}
STATUS = answer("JobStatus", "The job")
TEXT = {"text/plain": {"schema": {"type": "string"}}}
JSON_ANY: Json = {"application/json": {}}

#: (path, method) -> operation. Add a route here when you add it to the app.
#: The image route's answers; the console's gallery route serves the same.
IMAGE_RESPONSES: Json = {
    "200": {
        "description": "The image",
        "content": {f"image/{f}": {"schema": {"type": "string", "format": "binary"}} for f in FORMATS},
    },
    "302": {"description": "ZIMG_STORAGE=s3 on a host without the file: the object (presigned or public URL)"},
    "304": {"description": "Not modified (If-None-Match / If-Modified-Since)"},
    **errors(404, 503),
}


OPERATIONS: dict[tuple[str, str], Json] = {
    ("/v1/jobs", "post"): op(
        "createJob",
        "Enqueue an image job",
        {
            "202": answer("JobCreated", "Enqueued (or the existing job of this idempotency_key)", "Location"),
            **errors(400, 403, 408, 409, 413, 415, 429, 503),
        },
        requestBody={"required": True, "content": {"application/json": {"schema": ref("JobRequest")}}},
    ),
    ("/v1/jobs/{job_id}", "get"): op(
        "getJob",
        "A job's status, progress and result",
        {"200": STATUS, **errors(400, 404, 503)},
        parameters=[JOB_ID, WAIT],
    ),
    ("/v1/jobs/{job_id}", "delete"): op(
        "deleteJob",
        "Cancel a job (queued: never runs; started: stopped)",
        {"200": STATUS, **errors(403, 404, 503)},
        parameters=[JOB_ID],
    ),
    ("/v1/jobs/{job_id}/cancel", "post"): op(
        "cancelJob",
        "Cancel a job (same as DELETE)",
        {"200": STATUS, **errors(403, 404, 503)},
        parameters=[JOB_ID],
    ),
    ("/v1/jobs/{job_id}/image", "get"): op(
        "getImage",
        "The finished job's image (content-addressed: cache it)",
        IMAGE_RESPONSES,
        parameters=[JOB_ID],
    ),
    ("/v1/jobs/{job_id}/events", "get"): op(
        "jobEvents",
        "Server-sent events: the job's stage and step changes until it is final",
        {
            "200": {
                "description": "An event stream: `status` events (the job's status JSON) per change, `end` once final",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "204": {"description": "Last-Event-ID already names the job's final state: nothing more will come"},
            **errors(404, 503),
        },
        parameters=[
            JOB_ID,
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "Sent by EventSource on reconnect: only what changed since comes",
                "schema": {"type": "string"},
            },
        ],
    ),
    ("/v1/queues", "get"): op(
        "getQueues", "Queue depths, registry counts and workers", {"200": answer("Queues", "Queues"), **errors(503)}
    ),
    ("/v1/campaigns/{name}", "get"): op(
        "getCampaign",
        "A campaign's progress counts and manifest rows",
        {
            "200": {"description": "Counts, and rows unless rows=0", "content": {"application/json": {}}},
            **errors(400, 404, 503),
        },
        parameters=[
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "rows", "in": "query", "required": False, "schema": {"type": "string", "enum": ["0", "1"]}},
        ],
    ),
    ("/healthz", "get"): op(
        "health",
        "Redis, inference server and workers (no token needed)",
        {"200": answer("Health", "All up"), "503": answer("Health", "Something is down")},
        public=True,
    ),
    ("/metrics", "get"): op(
        "metrics",
        "Prometheus metrics, collected from Redis at scrape time",
        {"200": {"description": "Prometheus text format", "content": TEXT}, **errors(503)},
    ),
    ("/v1/openapi.json", "get"): op(
        "openapi",
        "This document",
        {"200": {"description": "OpenAPI 3.1 document", "content": {"application/json": {}}}},
    ),
    ("/", "get"): op(
        "console",
        "The live console: queues, workers, GPU use and the latest images (a page for people)",
        {"200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}},
    ),
    ("/console/events", "get"): op(
        "consoleEvents",
        "Server-sent events feeding the console: queue, worker and GPU snapshots and the latest images",
        {
            "200": {
                "description": "An event stream; each event's data is a JSON snapshot",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **errors(503),
        },
    ),
    ("/console/images/{job_id}", "get"): op(
        "consoleImage",
        "A finished job's image for the console's gallery: GET /v1/jobs/{job_id}/image, asking a browser for Basic",
        IMAGE_RESPONSES,
        parameters=[JOB_ID],
    ),
}
#: The rq-dashboard mount: one entry for its root page (its internals are its own).
DASHBOARD = op(
    "dashboard",
    "rq-dashboard on this service's queues; a browser is asked for a Basic login (the token as password)",
    {"200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}},
    security=[{"basic": []}],
)


#: ``options`` naming a preset, which supplies the prompt.
PRESET_GIVEN = {"type": "object", "required": ["preset"], "properties": {"preset": {"type": "string"}}}


def _schemas() -> Json:
    keyed = [(name, "validation", TypeAdapter(model)) for name, model in MODELS.items()]
    _, defs = TypeAdapter.json_schemas(keyed, ref_template=REF)  # type: ignore[arg-type]
    schemas: Json = dict(defs.get("$defs", {}))
    assert set(MODELS) <= set(schemas), f"component names must be the models' titles: {set(MODELS) - set(schemas)}"
    request = schemas["GenerateRequest"]
    submission = schemas["JobSubmission"]
    schemas["JobRequest"] = {
        "title": "JobRequest",
        "description": "POST /v1/jobs: the request's fields and the submission's, side by side. "
        "prompt is required unless options.preset names a preset (which supplies it).",
        "type": "object",
        "properties": {**request["properties"], **submission["properties"]},
        "additionalProperties": False,
        "anyOf": [
            {"required": ["prompt"]},
            {
                "required": ["options"],
                "properties": {"options": PRESET_GIVEN},
            },
        ],
    }
    assert submission["properties"]["priority"]["enum"] == list(PRIORITIES), "JobSubmission.priority drifted"
    return schemas


def _configured(schemas: Json, presets: Iterable[str] | None, watermarks: Iterable[str] | None) -> None:
    """Narrow names to what this server has configured: a client cannot know them otherwise."""
    if presets is not None:
        names = sorted(presets)
        preset = schemas["JobOptions"]["properties"]["preset"]["anyOf"][0]
        preset["enum"] = names
        preset["description"] = "A preset configured on this server" if names else "No presets are configured here"
    if watermarks is not None:
        by_name = schemas["Postprocess"]["properties"]["watermark"]["anyOf"][0]
        for node in (schemas["Watermark"]["properties"]["name"], by_name):
            node["enum"] = sorted(watermarks)


def _limits(schemas: Json, max_pixels: int | None, blocklist: bool) -> None:
    """Say this server's limits that no JSON Schema keyword can state (a product of two fields, a word list)."""
    props = schemas["GenerateRequest"]["properties"]  # JobRequest shares these property schemas
    if max_pixels is not None:
        for side in ("width", "height"):
            props[side]["description"] = (
                f"Pixels, a multiple of 64; on this server width x height is at most {max_pixels} (ZIMG_MAX_PIXELS)."
            )
    if blocklist:
        props["prompt"]["description"] += " This server also refuses a prompt holding a word of its blocklist."


def _served(operations: Mapping[tuple[str, str], Json], served: set[tuple[str, str]] | None) -> Json:
    paths: Json = {}
    for (path, method), operation in operations.items():
        if served is None or (path, method) in served:
            paths.setdefault(path, {})[method] = operation
    return paths


def document(
    server_url: str = "/",
    *,
    served: set[tuple[str, str]] | None = None,
    dashboard: str | None = None,
    presets: Iterable[str] | None = None,
    watermarks: Iterable[str] | None = None,
    max_pixels: int | None = None,
    blocklist: bool = False,
) -> Json:
    """The whole document.

    ``server_url`` is the prefix the API is mounted under; ``served`` the ``(path, method)``
    pairs the app answers (``None``: every known route); ``dashboard`` the rq-dashboard's
    path when mounted; ``presets``/``watermarks`` the names configured (``None``: not known).
    """
    schemas = copy.deepcopy(_base_schemas())
    _configured(schemas, presets, watermarks)
    _limits(schemas, max_pixels, blocklist)
    paths = _served(OPERATIONS, served)
    if dashboard:
        paths[dashboard] = {"get": DASHBOARD}
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "zimg-queue",
            "version": "1",
            "description": f"Z-Image-Turbo text-to-image jobs on RQ queues ({', '.join(PRIORITIES)} priority). "
            "Every error is JSON (`ErrorBody`); client input never gets a 5xx. With ZIMG_API_TOKEN unset, "
            "no route needs a token.",
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}, {"basic": []}],
        "paths": paths,
        "webhooks": {"jobEnded": WEBHOOK},
        "components": {
            "schemas": schemas,
            "headers": HEADERS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "ZIMG_API_TOKEN"},
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "For browsers (the dashboard at /rq/): any user name, ZIMG_API_TOKEN as password",
                },
            },
        },
    }


def _signature_header(name: str, description: str) -> Json:
    return {"name": name, "in": "header", "required": True, "description": description, "schema": {"type": "string"}}


#: What the service POSTs to ``options.webhook_url`` when a job ends (``workers/webhooks.py``).
WEBHOOK: Json = {
    "post": {
        "operationId": "jobEnded",
        "summary": "A job ended (finished, or failed with no retries left); signed per Standard Webhooks",
        "parameters": [
            _signature_header("webhook-id", "msg_<hex>: the same on every retry of one delivery (drop duplicates)"),
            _signature_header("webhook-timestamp", "Unix seconds when this attempt was signed"),
            _signature_header(
                "webhook-signature",
                "v1,<base64 HMAC-SHA256(key, '{id}.{timestamp}.{body}')>; key: ZIMG_WEBHOOK_SECRET "
                "(whsec_<base64> decoded, else its UTF-8 bytes). Absent when no secret is set.",
            ),
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref("JobState")}}},
        "responses": {
            "2XX": {"description": "Delivered; any other answer (or none within 10 s) is retried with backoff"}
        },
    }
}
_CACHE: list[Json] = []


def _base_schemas() -> Json:
    if not _CACHE:
        _CACHE.append(_schemas())
    return _CACHE[0]


def upstream_document(server_url: str = "/") -> Json:
    """The inference server's own document: ``POST /v1/generate`` with the upstream error shape."""
    keyed = [("UpstreamRequest", "validation", TypeAdapter(UpstreamRequest))]
    _, defs = TypeAdapter.json_schemas(keyed, ref_template=REF)  # type: ignore[arg-type]
    detail = {
        "type": "object",
        "required": ["detail"],
        "properties": {"detail": {"oneOf": [{"type": "string"}, {"type": "array", "items": ref("ErrorDetail")}]}},
    }
    item = {
        "type": "object",
        "required": ["loc", "msg", "type"],
        "properties": {
            "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
            "msg": {"type": "string"},
            "type": {"type": "string"},
        },
    }
    json_detail = {"content": {"application/json": {"schema": ref("Detail")}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "zimg inference server", "version": "1"},
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "paths": {
            "/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1 document", "content": JSON_ANY}},
                }
            },
            "/v1/generate": {
                "post": {
                    "operationId": "generate",
                    "summary": "Make one image (batched with concurrent requests of the same size and steps)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("UpstreamRequest")}},
                    },
                    "parameters": [
                        {"name": "X-Request-Id", "in": "header", "required": False, "schema": {"type": "string"}},
                        {"name": "X-Zimg-Job-Id", "in": "header", "required": False, "schema": {"type": "string"}},
                        {
                            "name": "X-Zimg-Deadline",
                            "in": "header",
                            "required": False,
                            "description": "Unix time in seconds: dropped (504) if not on the GPU by then",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {"description": 'The image: {"image": base64 PNG or JPEG}', "content": JSON_ANY},
                        "400": {"description": "Malformed transfer (encoding, truncated, nested)", **json_detail},
                        "401": {"description": "Missing or wrong bearer token", **json_detail},
                        "409": {"description": "Cancelled (DELETE /v1/requests/<job id>) before it ran", **json_detail},
                        "413": {"description": "Body too large", **json_detail},
                        "415": {"description": "A Content-Encoding other than identity", **json_detail},
                        "422": {
                            "description": "Invalid input: detail lists each bad field. Beyond the schema, the real "
                            "model's backend also refuses a prompt over its 512 tokens (it would be cut silently)",
                            **json_detail,
                        },
                        "500": {"description": "CUDA out of memory or a generation failure", **json_detail},
                        "503": {
                            "description": "Busy (queue full) or unhealthy; see Retry-After",
                            "headers": {"Retry-After": _header("Seconds to wait", {"type": "integer"})},
                            **json_detail,
                        },
                        "504": {"description": "X-Zimg-Deadline passed before the GPU got to it", **json_detail},
                    },
                }
            },
        },
        "components": {
            "schemas": {**defs.get("$defs", {}), "Detail": detail, "ErrorDetail": item},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "ZIMG_INFERENCE_TOKEN"}},
        },
    }


def _ours(app: Flask, endpoint: str) -> bool:
    """Routes this project added: all of ``zimg web``'s; in someone else's app, only the zimg blueprints'."""
    if endpoint == "static" or endpoint.endswith(".static") or endpoint.startswith("rq_dashboard."):
        return False
    return app.name == "zimg_queue.web" or endpoint.startswith("zimg")


def routes(app: Flask, prefix: str = "") -> set[tuple[str, str]]:
    """``(path, method)`` of every route of ours the app serves, paths in OpenAPI form relative to ``prefix``."""
    out = set()
    for rule in app.url_map.iter_rules():
        if not _ours(app, rule.endpoint) or not rule.rule.startswith(prefix):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?(\w+)>", r"{\1}", rule.rule)[len(prefix) :] or "/"
        out |= {(path, m.lower()) for m in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    return out


def dashboard_path(app: Flask, prefix: str = "") -> str | None:
    """Where rq-dashboard's front page is mounted (relative to ``prefix``), if it is."""
    pages = [
        r.rule
        for r in app.url_map.iter_rules()
        if r.endpoint == "rq_dashboard.queues_overview" and "<" not in r.rule and r.rule.startswith(prefix)
    ]
    return min(pages, key=len)[len(prefix) :] or "/" if pages else None


def configured_names(
    presets_path: str | None, settings: Settings | None = None
) -> tuple[list[str] | None, list[str] | None]:
    """The preset and watermark names configured here (``None`` for watermarks: any name, workers resolve it).

    ``settings`` are the app's (its ``app.config`` over the environment), so the watermark folder listed is the
    one its producer checks submissions against.
    """
    from ..options import watermark_sources
    from ..presets import PresetError, load_presets

    try:
        presets: list[str] | None = sorted(load_presets(presets_path).presets)
    except (PresetError, OSError):
        presets = None
    try:
        table, folder = watermark_sources(presets_path, settings)
    except (PresetError, OSError):
        return presets, None
    if not table and folder is None:
        return presets, None
    names = set(table)
    if folder is not None and folder.is_dir():
        names |= {p.stem for p in folder.iterdir() if p.suffix in (".png", ".webp")}
    return presets, sorted(names)


def for_app(app: Flask, prefix: str = "", presets_path: str | None = None) -> Json:
    """The document of what ``app`` serves under ``prefix``, with this server's configured names and limits."""
    from .extension import get_state

    settings = get_state(app).settings
    presets, watermarks = configured_names(presets_path, settings)
    return document(
        prefix or "/",
        served=routes(app, prefix),
        dashboard=dashboard_path(app, prefix),
        presets=presets,
        watermarks=watermarks,
        max_pixels=settings.max_pixels,
        blocklist=bool(settings.prompt_blocklist),
    )
