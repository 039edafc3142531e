"""Prometheus metrics of one service instance (served at ``GET /metrics``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
INFERENCE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """All collectors, registered in a private registry (several apps can live in one process)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "inference_duration_seconds",
            "Time of one backend run (one batch)",
            ["backend"],
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram("inference_batch_size", "Rows per backend run", buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram(
            "inference_batch_requests", "Requests merged into one backend run", buckets=BATCH_BUCKETS, registry=r
        )
        self.predictions = Counter("predictions", "Predictions served (rows)", ["model", "version"], registry=r)
        self.model_info = Gauge(
            "model_info", "The model being served (value 1)", ["name", "version", "sha256", "backend"], registry=r
        )
        self.model_ready = Gauge("model_ready", "1 when the model is loaded and the backend is ready", registry=r)
        self.model_load_failures = Counter("model_load_failures", "Failed model loads by reason", ["kind"], registry=r)
        self.store_queue = Gauge(
            "prediction_store_queue_depth", "Prediction records waiting in memory for the store", registry=r
        )
        self.store_spool = Gauge(
            "prediction_store_spool_records", "Prediction records spilled to local disk, awaiting replay", registry=r
        )
        self.store_up = Gauge("prediction_store_up", "1 while the last store write succeeded", ["store"], registry=r)
        self.store_written = Counter(
            "prediction_store_written_records", "Records written to the store", ["store"], registry=r
        )
        self.store_spooled = Counter(
            "prediction_store_spooled_records", "Records spilled to local disk during a store outage", registry=r
        )
        self.store_replayed = Counter(
            "prediction_store_replayed_records", "Spilled records later written to the store", registry=r
        )
        self.store_errors = Counter(
            "prediction_store_errors", "Store failures by operation", ["store", "operation"], registry=r
        )
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            if len(self._request_children) > 1000:  # bounded: routes are templates, statuses few
                self._request_children.clear()
            children = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
