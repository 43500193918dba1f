"""Prometheus metrics for one app, served at ``GET /metrics`` in the text exposition format.

Each app built by `create_app` gets its own `CollectorRegistry` (kept on
``app.state.metrics``), so several apps in one process (tests, benchmarks)
never share or double-register counters.  What is measured:

- ``nibble_http_requests_total`` and ``nibble_http_request_duration_seconds``
  by method, route *template* (``/v1/models/{model_id}``, never the raw path,
  so the label set stays bounded) and status; requests no route matched are
  labelled ``<unmatched>``;
- ``nibble_quantization_seconds`` (histogram), ``nibble_quantization_input_bytes_total``,
  ``nibble_quantization_output_bytes_total`` and ``nibble_quantized_tensors_total``
  by method, fed by `observe_quantization` (the quantize router calls it per
  tensor and method, from the job's report);
- under the guarded event loop (`app.connections`), ``nibble_connections_open``
  and ``nibble_connections_refused_total`` by reason (the problem's slug);
- the worker pool, read from ``app.state.pool.stats`` at scrape time: busy
  workers, queued requests, size, capacity, and its completed / rejected /
  timed-out job counts.

When API keys are configured (``NIBBLE_API_KEYS``) ``/metrics`` requires one,
like every route but ``/healthz`` and the page (issue 6); Prometheus sends it
with ``authorization: {credentials: <key>}`` in its scrape config.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from app.connections import STATS
from app.page import install_page
from app.request_log import install_request_log
from app.security import check_api_key

# Planner calls take microseconds to milliseconds; uploads take seconds to minutes.
REQUEST_BUCKETS_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                           10.0, 30.0, 60.0, 120.0, 300.0)
QUANTIZATION_BUCKETS_SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                                300.0)

#: request methods counted under their own name; any other is counted as "other"
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _PoolCollector(Collector):
    """Reads the app's pool statistics at scrape time (gauges cannot go stale between requests)."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        pool = getattr(self._app.state, "pool", None)
        if pool is None:
            return
        stats = pool.stats
        yield GaugeMetricFamily("nibble_pool_busy_workers", "Workers running a job now.", value=stats.busy)
        yield GaugeMetricFamily("nibble_pool_queued_requests",
                                "Requests holding a pool place but waiting for a worker.", value=stats.queued)
        yield GaugeMetricFamily("nibble_pool_workers", "Workers in the pool.", value=stats.workers)
        yield GaugeMetricFamily("nibble_pool_capacity", "Workers plus queue places.", value=stats.capacity)
        yield CounterMetricFamily("nibble_pool_jobs_completed", "Jobs that ended (any outcome).",
                                  value=stats.completed)
        yield CounterMetricFamily("nibble_pool_jobs_rejected", "Requests refused with 503 (pool full).",
                                  value=stats.rejected)
        yield CounterMetricFamily("nibble_pool_jobs_timed_out", "Jobs stopped at the time limit (504).",
                                  value=stats.timed_out)


class _ConnectionCollector(Collector):
    """Reads the guarded event loop's figures (`app.connections.STATS`) at scrape time; nothing when the process
    does not run on it."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        if not STATS.guarded:
            return
        yield GaugeMetricFamily("nibble_connections_open", "Connections the process holds open (guarded loop).",
                                value=STATS.open)
        refused = CounterMetricFamily("nibble_connections_refused", "Connections answered and closed by the "
                                      "guarded loop: head too slow (408), too large (431), too many open (503).",
                                      labels=("reason",))
        for reason, count in sorted(STATS.refused.items()):
            refused.add_metric((reason,), count)
        yield refused


class Metrics:
    """The metric objects of one app, in their own registry."""

    def __init__(self, app: FastAPI) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("nibble_http_requests", "HTTP requests answered, by route template and status.",
                                ("method", "route", "status"), registry=self.registry)
        self.request_seconds = Histogram(
            "nibble_http_request_duration_seconds", "Time from request start to the end of the answer body.",
            ("method", "route", "status"), buckets=REQUEST_BUCKETS_SECONDS, registry=self.registry)
        self.quantization_seconds = Histogram(
            "nibble_quantization_seconds", "Seconds to quantize one tensor, by method.", ("method",),
            buckets=QUANTIZATION_BUCKETS_SECONDS, registry=self.registry)
        self.quantization_input_bytes = Counter(
            "nibble_quantization_input_bytes", "Bytes of tensors quantized, by method.", ("method",),
            registry=self.registry)
        self.quantization_output_bytes = Counter(
            "nibble_quantization_output_bytes", "Bytes of INT4 payload produced, by method.", ("method",),
            registry=self.registry)
        self.quantized_tensors = Counter("nibble_quantized_tensors", "Tensors quantized, by method.", ("method",),
                                         registry=self.registry)
        self.registry.register(_PoolCollector(app))
        self.registry.register(_ConnectionCollector())
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def request_children(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        """The request counter and duration histogram of one label set, looked up once then cached.

        ``labels()`` takes a lock and builds the label tuple on every call; the
        set of (method, route template, status) is small and bounded, so each
        request pays a dict lookup instead.
        """
        if method not in _KNOWN_METHODS:  # llhttp accepts ~35 methods: each would be a new label set
            method = "other"
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = (self.requests.labels(*labels), self.request_seconds.labels(*labels))
            self._request_children[key] = children
        return children

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count and time one HTTP request (the access log's middleware hands each over as its answer ends)."""
        count, duration = self.request_children(method, route, status)
        count.inc()
        duration.observe(seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def metrics_of(app: Any) -> Metrics:
    """The `Metrics` installed on `app` by `install_metrics`."""
    metrics: Metrics = app.state.metrics
    return metrics


def observe_quantization(app: Any, method: str, seconds: float, input_bytes: int, output_bytes: int) -> None:
    """Record one tensor quantized by `method`: its seconds, input bytes and INT4 payload bytes."""
    metrics = metrics_of(app)
    metrics.quantization_seconds.labels(method).observe(seconds)
    metrics.quantization_input_bytes.labels(method).inc(input_bytes)
    metrics.quantization_output_bytes.labels(method).inc(output_bytes)
    metrics.quantized_tensors.labels(method).inc()


def observe_report(app: Any, report: Mapping[str, Any]) -> None:
    """Record every tensor of a quantize report (``tensors``) or compare report (``tensors[].results``)."""
    for tensor in report.get("tensors", []):
        for result in tensor.get("results", [tensor]):
            observe_quantization(app, str(result["method"]), float(result["seconds"]),
                                 int(result["bytes"]["input"]), int(result["bytes"]["output"]))


def install_metrics(app: FastAPI) -> Metrics:
    """Give `app` its registry and ``GET /metrics`` (not in the OpenAPI schema); requests are counted by the
    access log's middleware (`Metrics.observe_request`)."""
    metrics = Metrics(app)
    app.state.metrics = metrics

    @app.get("/metrics", include_in_schema=False)
    async def read_metrics(request: Request) -> Response:
        check_api_key(request)  # not on a v1 router (`ApiKeyRoute`): checked here, before anything is read
        return Response(metrics_of(request.app).render(), media_type=CONTENT_TYPE_LATEST)

    return metrics


def install_observability(app: FastAPI) -> None:
    """Metrics, the per-request JSON access log with ``X-Request-ID``, and the web page, on `app`.

    Call it last in `create_app`: the middlewares it adds are then the
    outermost, so they also see the answers of the other middlewares (413s).
    """
    install_request_log(app, install_metrics(app).observe_request)
    install_page(app)
