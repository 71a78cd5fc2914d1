"""rq-dashboard's actions, made safe for a Redis the dashboard shares with us and with others.

rq-dashboard 0.9's action routes answered 500 for a missing job (requeue), an empty queue
(compact: Redis ``RENAME`` of a missing key) or a job that is not JSON (another app's job
on the same Redis); its requeue fetched jobs with RQ's default serializer, pickle; and
``/requeue/<queue>`` changed state on a GET. Here each action is replaced by a small view
with the same URL and answer shape (``{"status": "OK"}``), so the dashboard's own pages
keep working, and:

* actions are POST only: a GET to an action URL is 405;
* they act only on this service's queues (``zimg-high|normal|low``); another queue is 404;
* a missing job is 404, a job that is not ours (not JSON, or not in our queues) 409,
  a job that cannot be requeued (not failed) 409;
* jobs are read with the JSON serializer only.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, jsonify, request
from rq import Queue
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import (
    BaseRegistry,
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.serializers import JSONSerializer

from ..claims import ClaimingQueue
from .body import ApiError
from .extension import get_state
from .origin import check_origin
from .transport import check_request_body

BLUEPRINT = "rq_dashboard"
REGISTRIES: dict[str, type[BaseRegistry]] = {
    "failed": FailedJobRegistry,
    "deferred": DeferredJobRegistry,
    "started": StartedJobRegistry,
    "finished": FinishedJobRegistry,
    "canceled": CanceledJobRegistry,
    "scheduled": ScheduledJobRegistry,
}


def _ok(**extra: object) -> Response:
    response = jsonify(status="OK", **extra)
    response.headers["Cache-Control"] = "no-store"
    return response


def _our_queue(name: str) -> Queue:
    state = get_state()
    if name not in state.settings.queue_names:
        raise ApiError(404, "not_found", f"no zimg-queue queue named {name!r} (this dashboard acts on ours only)")
    return ClaimingQueue(name, connection=state.producer.connection, serializer=JSONSerializer)


def _our_job(job_id: str) -> Job:
    state = get_state()
    try:
        job = Job.fetch(job_id, connection=state.producer.connection, serializer=JSONSerializer)
    except (NoSuchJobError, ValueError):  # ValueError: not even a valid RQ job id
        raise ApiError(404, "not_found", f"no job {job_id!r} (it never existed or has expired)") from None
    try:
        job.args  # noqa: B018 - deserializes: a job that is not JSON is not ours
    except DeserializationError:
        raise ApiError(409, "foreign_job", f"job {job_id!r} is not a zimg-queue job (its data is not JSON)") from None
    if job.origin not in state.settings.queue_names:
        raise ApiError(409, "foreign_job", f"job {job_id!r} belongs to queue {job.origin!r}, not to zimg-queue")
    return job


def requeue_job_view(job_id: str) -> Response:
    job = _our_job(job_id)
    try:
        job.requeue()
    except InvalidJobOperation:
        message = f"job {job_id!r} is {job.get_status()}: only failed jobs are requeued"
        raise ApiError(409, "not_failed", message) from None
    return _ok()


def requeue_all(queue_name: str) -> Response:
    queue = _our_queue(queue_name)
    count = 0
    for job_id in queue.failed_job_registry.get_job_ids(cleanup=False):
        try:
            _our_job(job_id).requeue()
            count += 1
        except (ApiError, InvalidJobOperation):
            continue  # gone meanwhile, or not ours: the others still go
    return _ok(count=count)


def _delete_disabled() -> bool:
    from flask import current_app

    return bool(current_app.config.get("RQ_DASHBOARD_DISABLE_DELETE"))


def delete_job_view(job_id: str) -> Response:
    if _delete_disabled():
        return jsonify(status="DISABLED")
    _our_job(job_id).delete()
    return _ok()


def empty_queue(queue_name: str, registry_name: str) -> Response:
    if _delete_disabled():
        return jsonify(status="DISABLED")
    queue = _our_queue(queue_name)
    if registry_name == "queued":
        queue.empty()
        return _ok()
    registry_class = REGISTRIES.get(registry_name)
    if registry_class is None:
        raise ApiError(404, "not_found", f"no registry {registry_name!r}: one of queued, {', '.join(REGISTRIES)}")
    registry = registry_class(queue.name, connection=queue.connection, serializer=JSONSerializer)
    members: list[bytes] = queue.connection.zrange(registry.key, 0, -1)  # type: ignore[assignment]
    for member in members:
        job_id = member.decode().split(":", 1)[0]  # the started registry holds job_id:execution_id
        try:
            _our_job(job_id).delete()
        except ApiError:
            pass  # a dangling or foreign id: only its entry in our registry goes
        queue.connection.zrem(registry.key, member)
    return _ok()


def compact_queue(queue_name: str) -> Response:
    queue = _our_queue(queue_name)
    if queue.count:  # RQ's compact renames the queue's key: a missing (empty) queue has none to rename
        queue.compact()
    return _ok()


ACTIONS: dict[str, Callable[..., Response]] = {
    f"{BLUEPRINT}.requeue_job_view": requeue_job_view,
    f"{BLUEPRINT}.requeue_all": requeue_all,
    f"{BLUEPRINT}.delete_job_view": delete_job_view,
    f"{BLUEPRINT}.empty_queue": empty_queue,
    f"{BLUEPRINT}.compact_queue": compact_queue,
}


def _post_only() -> Response | None:
    if request.endpoint in ACTIONS and request.method != "POST":
        response = jsonify(error="method_not_allowed", message="dashboard actions change state: POST only")
        response.status_code = 405
        response.headers["Allow"] = "POST"
        return response
    return None


def harden(app: Flask) -> None:
    """Swap rq-dashboard's action views for the ones above, POST only, answering :class:`ApiError` as JSON."""
    for endpoint, view in ACTIONS.items():
        if endpoint in app.view_functions:
            app.view_functions[endpoint] = view
    app.before_request_funcs.setdefault(BLUEPRINT, []).extend([_post_only, check_origin, check_request_body])
    app.error_handler_spec[BLUEPRINT][None][ApiError] = lambda exc: exc.response()
