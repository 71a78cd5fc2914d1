"""Failures a generate job can end with, split by whether a retry can help."""

from __future__ import annotations


class GenerateError(Exception):
    """Base class. ``transient`` errors are retried by RQ's ``Retry``; others fail the job at once."""

    transient = True


class InferenceUnavailable(GenerateError):
    """The inference server could not be reached, timed out, dropped the connection or answered 5xx."""


class InferenceOutOfMemory(GenerateError):
    """The inference server answered ``500 {"detail": "CUDA out of memory ..."}``."""


class InferenceRejected(GenerateError):
    """The inference server answered 4xx: the request itself is wrong, so retrying cannot help."""

    transient = False


class BadImage(GenerateError):
    """The server's ``image`` was empty, not base64, not an image, or not of the requested size."""

    transient = False


class JobStopped(GenerateError):
    """The job was cancelled while it ran."""

    transient = False


class BadOptions(GenerateError):
    """The job's options cannot be carried out (say, a watermark name the operator has not configured)."""

    transient = False
