"""The HTTP API's documents as pydantic models: the job submission, status, result, errors, webhook.

:class:`~zimg_queue.request.GenerateRequest` and :class:`~zimg_queue.options.JobOptions` are the
inputs every entry point validates. The models here describe the rest of the wire: what
``POST /v1/jobs`` takes around the request (:class:`JobSubmission`), and what the service
answers or sends (:class:`JobStatus` with its :class:`JobResult`, :class:`ErrorBody`, and the
webhook payload :class:`JobState`). :mod:`zimg_queue.web.openapi` publishes their JSON Schema;
``tests/test_openapi.py`` validates real answers of a real job against it. Answers may
gain fields over time (``additionalProperties`` is open on them); requests may not.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, WithJsonSchema

from .options import JobOptions
from .validation import JOB_ID_PATTERN, Checker

Priority = Literal["high", "normal", "low"]
Status = Literal["queued", "started", "finished", "failed", "canceled", "stopped", "deferred", "scheduled"]
IdempotencyKey = Annotated[
    str,
    Strict(),
    Field(
        pattern=JOB_ID_PATTERN,
        description="Becomes the job id: the same key always answers with the same job. null: none.",
    ),
]


class JobSubmission(BaseModel):
    """What ``POST /v1/jobs`` takes beside the request fields (which sit beside these, flat)."""

    model_config = ConfigDict(extra="forbid", title="JobSubmission")

    priority: Priority = "normal"
    idempotency_key: IdempotencyKey | None = None
    options: JobOptions | None = Field(
        default=None, description="Preset and placeholders, post-processing, webhook_url, storage."
    )


class Answer(BaseModel):
    """Answers may gain fields: clients ignore what they do not know."""

    model_config = ConfigDict(extra="allow")


class JobUrls(Answer):
    get: str
    image: str
    cancel: str


class JobCreated(Answer):
    """``202``: the job is queued (or, with an ``idempotency_key`` seen before, the existing job)."""

    id: str
    status: Status
    urls: JobUrls


class Progress(Answer):
    stage: str = Field(description="queued, waiting_for_inference, inference, saving, postprocessing, done, ...")
    percent: float = Field(ge=0, le=100)
    step: int | None = Field(default=None, description="Denoising step done (during inference)")
    steps: int | None = None
    downscaled: bool | None = Field(default=None, description="Retried smaller after the GPU ran out of memory")


class Timings(Answer):
    queued_s: float = Field(description="From enqueue to the worker starting the job")
    inference_s: float = Field(description="The inference call (0 on a cache hit)")
    total_s: float = Field(description="From the worker starting the job to the result")


class ResultFile(Answer):
    """One stored image: the original and, with post-processing, the final image and its thumbnail."""

    role: Literal["original", "final", "thumbnail"]
    key: str = Field(description="Content address: SHA-256 of the request (and post-processing) that made it")
    path: str = Field(description="Where the worker stored it (inside the image folder)")
    format: Literal["png", "jpeg", "webp"]
    width: int
    height: int
    bytes: int
    sha256: str = Field(description="SHA-256 of the file's bytes")
    object_key: str | None = Field(default=None, description="With storage s3: the object's key")
    url: str | None = Field(default=None, description="With storage s3: a URL to fetch it")


class Downscaled(Answer):
    from_: list[int] = Field(alias="from", description="[width, height] asked for")
    to: list[int] = Field(description="[width, height] made")


class JobResult(Answer):
    """A finished job's result: ``path`` and its neighbours describe the final image."""

    path: str
    width: int
    height: int
    seed: int = Field(description="The seed used: send it back to get the same image")
    format: Literal["png", "jpeg", "webp"]
    bytes: int
    sha256: str
    request_key: str = Field(description="SHA-256 of the canonical request: the image cache's key")
    backend: str | None = Field(description="The inference backend that made it; null on a cache hit")
    cache_hit: bool = Field(description="True when the image was already stored and no GPU time was spent")
    timings: Timings
    queued_s: float
    inference_s: float
    total_s: float
    files: list[ResultFile] = Field(description="Every file the job wrote, final image first")
    downscaled: Downscaled | None = Field(default=None, description="Present when it was made smaller after an OOM")
    original_path: str | None = Field(default=None, description="With post-processing: the unprocessed image")
    url: str | None = Field(default=None, description="With storage s3: a URL of the final image")
    image_url: str | None = Field(default=None, description="The API's URL of the image (added by the API)")


class Attempt(Answer):
    attempt: int
    error: str
    at: str = Field(description="UTC, ISO 8601")


#: The request as stored with the job: a GenerateRequest (in the OpenAPI document's components).
STORED_REQUEST = {"anyOf": [{"$ref": "#/components/schemas/GenerateRequest"}, {"type": "null"}]}


class JobState(Answer):
    """A job as ``zimg_queue.status.job_status`` reads it: the webhook payload and the API's status minus URLs."""

    id: str
    status: Status
    queue: str
    progress: Progress
    position: int | None = Field(
        description="While queued: how many queued jobs start before this one (higher-priority queues included)"
    )
    request: Annotated[dict[str, Any] | None, WithJsonSchema(STORED_REQUEST)] = Field(
        description="The validated request, seed included"
    )
    result: JobResult | None = Field(description="Set once finished")
    error: str | None = Field(description="The last line of the failure (failed or stopped)")
    attempts: list[Attempt]
    created_at: str | None
    enqueued_at: str | None
    started_at: str | None
    ended_at: str | None


class JobStatus(JobState):
    """``GET /v1/jobs/<id>``: the job's state and its URLs."""

    urls: JobUrls
    timed_out: bool | None = Field(
        default=None, description="With ?wait=N only: true when N seconds passed before the job was final"
    )


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the bad field (body for the body as a whole)")
    message: str = Field(description="The rule it broke, in words")


class ErrorBody(Answer):
    """Every error answer: ``error`` is a stable code, ``message`` is for people, ``errors`` names fields (400)."""

    error: str = Field(description="validation_error, unauthorized, not_found, rate_limited, unavailable, ...")
    message: str
    errors: list[FieldError] | None = None
    retry_after: int | None = Field(default=None, description="429: seconds until the window resets")
    id: str | None = Field(default=None, description="409 idempotency_conflict: the job the key already names")
    urls: JobUrls | None = Field(default=None, description="409: that job's URLs")
    status: Status | None = Field(default=None, description="404 not_ready: the job's status")


class Check(Answer):
    ok: bool
    error: str | None = None


class Health(Answer):
    status: Literal["ok", "down"]
    redis: Check | None = None
    inference: Check | None = None
    workers: Check | None = None


class QueueInfo(Answer):
    name: str
    priority: Priority
    queued: int
    started: int
    finished: int
    failed: int
    deferred: int
    scheduled: int
    canceled: int
    # For autoscalers (zimg_queue.capacity): estimated_wait_s = jobs ahead x mean_job_s / workers_ready.
    workers_ready: int | None = None
    mean_job_s: float | None = None
    estimated_wait_s: float | None = None
    no_workers: bool | None = None


class WorkerInfo(Answer):
    name: str
    state: str
    queues: list[str]
    current_job: str | None


class Queues(Answer):
    queues: list[QueueInfo]
    workers: list[WorkerInfo]


SUBMISSION = Checker(JobSubmission)
