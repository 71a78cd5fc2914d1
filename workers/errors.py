"""Failures a generate job can end with, split by whether a retry can help, and whether to wait instead."""

from __future__ import annotations


class GenerateError(Exception):
    """Base class. ``transient`` errors are retried by RQ's ``Retry``; others fail the job at once."""

    transient = True


class InferenceUnavailable(GenerateError):
    """The inference server timed out, dropped the connection while still alive, or answered a 5xx.

    A live server's own error: the job's retry policy decides. ``status_code`` is the HTTP status when
    there was an answer; ``retry_after`` the seconds a 503 asked for.
    """

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


class InferenceDown(InferenceUnavailable):
    """The inference server cannot be reached, or answered 503 (busy or unhealthy).

    Not a spent retry: the job waits for the server (see :mod:`workers.outage`) for up
    to ``ZIMG_OUTAGE_BUDGET`` seconds of outage.
    """


class InferenceOutage(GenerateError):
    """The inference server has been down for longer than the outage budget: the job fails now."""

    transient = False


class InferenceOutOfMemory(GenerateError):
    """The inference server answered ``500 {"detail": "CUDA out of memory ..."}``."""


class InferenceRejected(GenerateError):
    """The inference server answered 4xx: the request itself is wrong, so retrying cannot help."""

    transient = False


class BadImage(GenerateError):
    """The server's ``image`` was not base64, not an image, or not of the requested size."""

    transient = False


class EmptyImage(BadImage):
    """The server answered 200 with an empty image: a fault of the moment (the next answer is usually fine)."""

    transient = True


class JobStopped(GenerateError):
    """The job was cancelled while it ran."""

    transient = False


class BadOptions(GenerateError):
    """The job's options cannot be carried out (say, a watermark name the operator has not configured)."""

    transient = False
