"""Prometheus metrics: every request, every connection pool and every resource's life.

Names follow the OpenTelemetry semantic conventions as Prometheus renders them
(`http.server.request.duration` becomes `http_server_request_duration_seconds`).

With WORKERS > 1 each worker is a process of its own: the server sets PROMETHEUS_MULTIPROC_DIR
(see __main__.py) before any worker starts, prometheus-client then keeps every value in a file
there, and a scrape, whichever worker answers it, sums the files of them all.
"""

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import NamedTuple

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from {{ cookiecutter.package_name }}.settings import Settings

# Every counter and histogram would otherwise get a `_created` series besides, doubling the
# series a scrape stores for a timestamp that the process start time already gives.
disable_created_metrics()  # type: ignore[no-untyped-call]

# The label of every request no route matched: a scanner's random paths must not each become
# a time series of their own. Route templates start with "/", so this cannot be one.
UNMATCHED_ROUTE = "unmatched"
# Any other method is counted as "_OTHER", as OpenTelemetry does, for the same reason.
KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)

# OpenTelemetry's advice for `http.server.request.duration`, in seconds.
REQUEST_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
POOL_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUEST_DURATION = Histogram(
    "http_server_request_duration_seconds",
    "Duration of HTTP server requests, by route template.",
    ["http_request_method", "http_route", "http_response_status_code"],
    buckets=REQUEST_DURATION_BUCKETS,
)
ACTIVE_REQUESTS = Gauge(
    "http_server_active_requests",
    "HTTP server requests in flight.",
    ["http_request_method"],
    multiprocess_mode="livesum",
)

POOL_LABELS = ["db_client_connection_pool_name"]
DB_POOL_PENDING = Gauge(
    "db_client_connection_pending_requests",
    "Requests waiting for a connection of the pool.",
    POOL_LABELS,
    multiprocess_mode="livesum",
)
DB_POOL_TIMEOUTS = Counter(
    "db_client_connection_timeouts",
    "Waits for a pooled connection that ended in a timeout.",
    POOL_LABELS,
)
DB_POOL_WAIT = Histogram(
    "db_client_connection_wait_time_seconds",
    "Time to obtain a connection from the pool.",
    POOL_LABELS,
    buckets=POOL_WAIT_BUCKETS,
)

RESOURCE_UP = Gauge(
    "resource_up",
    "1 if the last readiness check of the resource passed, else 0 (the lowest of all workers).",
    ["resource"],
    multiprocess_mode="livemin",
)
RESOURCE_UNAVAILABLE = Counter(
    "resource_unavailable",
    "Requests answered 503 because the resource did not answer.",
    ["resource"],
)
RESOURCE_OPENS = Counter("resource_opens", "Times the resource was opened.", ["resource"])
RESOURCE_CLOSES = Counter(
    "resource_closes",
    "Times the resource was closed, by outcome (ok, failed).",
    ["resource", "outcome"],
)
RESOURCE_OPEN_DURATION = Gauge(
    "resource_open_duration_seconds",
    "How long the resource took to open at startup, retries included (the slowest worker).",
    ["resource"],
    multiprocess_mode="livemax",
)


class ConnectionCounts(NamedTuple):
    used: int
    idle: int
    limit: int


# Each pool's counts, read from the client library when asked.
Pools = Mapping[str, Callable[[], ConnectionCounts]]


def is_multiprocess() -> bool:
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


class MetricsMiddleware:
    """Times each request and counts it under its route template, once the router has matched
    it (the router writes the route into the scope)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # prometheus-client's labels() costs more than an observation: each combination's
        # series is looked up once and kept (there are as few as the metric has series).
        self._in_flight: dict[str, Gauge] = {}
        self._durations: dict[tuple[str, str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "_OTHER"
        status_code: int | None = None

        async def send_recording_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        in_flight = self._in_flight.get(method) or self._in_flight.setdefault(
            method, ACTIVE_REQUESTS.labels(method)
        )
        in_flight.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            in_flight.dec()
            # None: the client went away before any answer, which no status code describes.
            if status_code is not None:
                self._duration(method, scope.get("route"), status_code).observe(
                    time.perf_counter() - started
                )

    def _duration(self, method: str, route: BaseRoute | None, status_code: int) -> Histogram:
        key = (method, getattr(route, "path", UNMATCHED_ROUTE), status_code)
        series = self._durations.get(key)
        if series is None:
            series = self._durations[key] = REQUEST_DURATION.labels(*key[:2], str(status_code))
        return series


class PoolGauge(NamedTuple):
    name: str
    documentation: str
    labels: tuple[str, ...]


DB_CONNECTIONS = PoolGauge(
    "db_client_connection_count",
    "Connections of the pool, by state (idle, used).",
    ("db_client_connection_pool_name", "db_client_connection_state"),
)
DB_CONNECTION_MAX = PoolGauge(
    "db_client_connection_max", "The most connections the pool may open.", tuple(POOL_LABELS)
)
HTTP_CONNECTIONS = PoolGauge(
    "http_client_open_connections",
    "Open connections of the outgoing HTTP client, by state (active, idle).",
    ("http_client_name", "http_connection_state"),
)
HTTP_CONNECTION_MAX = PoolGauge(
    "http_client_connection_max",
    "The most connections the outgoing HTTP client may open.",
    ("http_client_name",),
)
POOL_GAUGES = (DB_CONNECTIONS, DB_CONNECTION_MAX, HTTP_CONNECTIONS, HTTP_CONNECTION_MAX)


def _pool_samples(
    db_pools: Pools, http_pools: Pools
) -> Iterator[tuple[PoolGauge, tuple[str, ...], float]]:
    for name, read in db_pools.items():
        counts = read()
        yield DB_CONNECTIONS, (name, "used"), counts.used
        yield DB_CONNECTIONS, (name, "idle"), counts.idle
        yield DB_CONNECTION_MAX, (name,), counts.limit
    for name, read in http_pools.items():
        counts = read()
        yield HTTP_CONNECTIONS, (name, "active"), counts.used
        yield HTTP_CONNECTIONS, (name, "idle"), counts.idle
        yield HTTP_CONNECTION_MAX, (name,), counts.limit


class _PoolCollector(Collector):
    """The pools' figures as the client libraries hold them, read at scrape time."""

    def __init__(self, db_pools: Pools, http_pools: Pools) -> None:
        self._db_pools = db_pools
        self._http_pools = http_pools

    def collect(self) -> Iterator[Metric]:
        families = {
            gauge: GaugeMetricFamily(gauge.name, gauge.documentation, labels=gauge.labels)
            for gauge in POOL_GAUGES
        }
        for gauge, labels, value in _pool_samples(self._db_pools, self._http_pools):
            families[gauge].add_metric(labels, value)
        yield from families.values()


async def _write_pool_figures(db_pools: Pools, http_pools: Pools, every: float) -> None:
    """With WORKERS > 1 a scrape cannot ask the other workers' pools: each worker writes its
    figures into its files this often, for whichever worker answers the scrape to sum."""
    gauges = {
        gauge: Gauge(
            gauge.name,
            gauge.documentation,
            gauge.labels,
            registry=None,  # only the files are read: MultiProcessCollector sums them
            multiprocess_mode="livesum",
        )
        for gauge in POOL_GAUGES
    }
    while True:
        for gauge, labels, value in _pool_samples(db_pools, http_pools):
            gauges[gauge].labels(*labels).set(value)
        await asyncio.sleep(every)


@asynccontextmanager
async def expose_metrics(
    settings: Settings, *, db_pools: Pools, http_pools: Pools
) -> AsyncIterator[CollectorRegistry]:
    """The registry /metrics renders, for as long as the pools it reads are open."""
    registry = CollectorRegistry()
    if not is_multiprocess():
        registry.register(REGISTRY)  # this process's own metrics, and its CPU and memory
        registry.register(_PoolCollector(db_pools, http_pools))
        yield registry
        return
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    writer = asyncio.create_task(
        _write_pool_figures(db_pools, http_pools, settings.metrics_sample_seconds)
    )
    try:
        yield registry
    finally:
        writer.cancel()
        # A stopped worker's pools and readiness no longer count; its counters still do.
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
