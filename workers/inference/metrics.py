"""The inference server's own Prometheus metrics, in a registry of its own (served at its ``/metrics``).

Everything here is measured by the inference server process itself, and every HELP text says so: the
web service's ``/metrics`` reads the queue from Redis, this one sees the GPU side.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: The ``outcome`` label of ``zimg_inference_requests_total``.
OUTCOMES = ("ok", "4xx", "oom", "busy", "expired", "cancelled", "error")


class InferenceMetrics:
    """Answers by outcome, batch sizes, queue length and the GPU-busy share of the last minute."""

    def __init__(self, queue_length: Callable[[], float], busy_ratio: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        by = "measured by the inference server"
        self.batch_size = Histogram(
            "zimg_inference_batch_size", f"Size of the batch each answered request was generated in ({by})",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batches = Histogram(
            "zimg_inference_batch_images", f"Images per successful backend call, one observation per batch ({by})",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "zimg_inference_batch_seconds", f"Seconds each successful backend call took ({by})",
            buckets=DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.seconds = Histogram(
            "zimg_inference_request_seconds", f"Time from a request's arrival to its image ({by})",
            buckets=DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.requests = Counter(
            "zimg_inference_requests", f"Answers to POST /v1/generate by outcome: {', '.join(OUTCOMES)} ({by})",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        queue = Gauge("zimg_inference_queue_length", f"Requests waiting for the GPU ({by})", registry=self.registry)
        queue.set_function(queue_length)
        busy = Gauge(
            "zimg_gpu_busy_ratio", f"Share of the last minute the backend spent generating ({by})",
            registry=self.registry,
        )  # fmt: skip
        busy.set_function(busy_ratio)

    def observe(self, batch_size: int, seconds: float) -> None:
        """One request answered with an image."""
        self.batch_size.observe(batch_size)
        self.seconds.observe(seconds)
        self.requests.labels("ok").inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batches.observe(size)
        self.batch_seconds.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
