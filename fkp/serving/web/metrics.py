"""Prometheus metrics of one server: requests, latency, faces, the model version, reloads.

Each app gets its own registry (not the process-wide default), so two servers in one
process -- or the tests' -- never mix their counts.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Latency buckets (seconds) around what a photo takes on CPU: tens of milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The instruments; :meth:`render` is the ``/metrics`` body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fkp_http_requests",
            "HTTP requests answered, by route and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fkp_http_request_duration_seconds",
            "Time from request start to response, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.faces = Counter(
            "fkp_faces_predicted", "Faces whose keypoints were predicted.", registry=self.registry
        )
        self.model_info = Gauge(
            "fkp_model_info",
            "The model being served (value 1), labelled with its reference and version.",
            ["ref", "version"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "fkp_model_reloads", "Times a moved alias swapped in a new model version.", registry=self.registry
        )

    def set_model(self, ref: str, version: str) -> None:
        """Point ``fkp_model_info`` at the model now served (only one series is 1)."""
        self.model_info.clear()
        self.model_info.labels(ref=ref, version=version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
