"""Prometheus metrics: every request, every connection pool, every resource's life and the
background tasks.

Names follow the OpenTelemetry semantic conventions as Prometheus renders them
(`http.server.request.duration` becomes `http_server_request_duration_seconds`).

With WORKERS > 1 each worker is a process of its own: the server sets PROMETHEUS_MULTIPROC_DIR
(see __main__.py) before any worker starts, prometheus-client then keeps every value in a file
there, and a scrape, whichever worker answers it, sums the files of them all.
"""

import asyncio
import glob
import math
import os
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from functools import cache
from itertools import accumulate
from typing import NamedTuple, Protocol

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.routing import BaseRoute

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

REQUEST_DURATION_NAME = "http_server_request_duration_seconds"
REQUEST_DURATION_HELP = "Duration of HTTP server requests, by route template."
REQUEST_DURATION_LABELS = ("http_request_method", "http_route", "http_response_status_code")
ACTIVE_REQUESTS_NAME = "http_server_active_requests"
ACTIVE_REQUESTS_HELP = "HTTP server requests in flight."
ACTIVE_REQUESTS_LABELS = ("http_request_method",)

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

BACKGROUND_RUNNING = Gauge(
    "background_tasks_running",
    "Background tasks running now (the sum of all workers).",
    multiprocess_mode="livesum",
)
BACKGROUND_FINISHED = Counter(
    "background_tasks_finished",
    "Background tasks that ended, by outcome (ok, failed, timed_out, cancelled).",
    ["outcome"],
)

{%- if cookiecutter.use_rabbitmq %}

RABBITMQ_CONNECTION_OPEN = Gauge(
    "rabbitmq_connection_open",
    "1 while the RabbitMQ connection is open, 0 while it is lost (the lowest of all workers).",
    multiprocess_mode="livemin",
)
MESSAGES_PUBLISHED = Counter(
    "messaging_client_published_messages",
    "Messages published, by outcome (ok: confirmed by the broker; timeout; failed).",
    ["outcome"],
)
MESSAGES_CONSUMED = Counter(
    "messaging_client_consumed_messages",
    "Messages consumed, by outcome (handled, duplicate, retried, dead_lettered, rejected).",
    ["outcome"],
)
MESSAGES_IN_FLIGHT = Gauge(
    "messaging_messages_in_flight",
    "Messages being handled now (the sum of all workers).",
    multiprocess_mode="livesum",
)
{%- endif %}
{%- if cookiecutter.use_auth %}

AUTH_VERIFICATIONS = Counter(
    "auth_verifications",
    "Bearer tokens checked, by outcome (ok, missing, malformed, too_large, bad_algorithm,"
    " unknown_key, bad_signature, expired, not_yet_valid, wrong_audience, wrong_issuer,"
    " missing_claim, invalid).",
    ["outcome"],
)
AUTH_KEY_REFRESHES = Counter(
    "auth_key_refreshes",
    "Fetches of the identity provider's keys, by outcome (ok, failed).",
    ["outcome"],
)
AUTH_KEYS_FETCHED = Gauge(
    "auth_keys_fetched_timestamp_seconds",
    "When the keys in use were fetched (Unix time; the oldest of all workers): their age is"
    " time() minus this.",
    multiprocess_mode="livemin",
)
{%- endif %}
{%- if cookiecutter.use_postgres and cookiecutter.use_rabbitmq %}

# Measured by the relay after each pass (outbox.py), not by a query per scrape. Every process
# sees the same table: with several workers, the highest (the latest measure, or near it).
OUTBOX_PENDING = Gauge(
    "outbox_pending_events",
    "Events committed to the outbox and not yet published (at the relay's last pass).",
    multiprocess_mode="livemax",
)
OUTBOX_LAG = Gauge(
    "outbox_lag_seconds",
    "Age of the oldest event not yet published (0 when none is pending), at the relay's last pass.",
    multiprocess_mode="livemax",
)
{%- endif %}


class ConnectionCounts(NamedTuple):
    used: int
    idle: int
    limit: int


# Each pool's counts, read from the client library when asked.
Pools = Mapping[str, Callable[[], ConnectionCounts]]


def is_multiprocess() -> bool:
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


class RequestMetrics(Protocol):
    """What the request middleware records of each request."""

    def started(self, method: str) -> str:
        """Counts a request in flight; returns its method's label, for `finished`."""

    def finished(
        self, method: str, route: BaseRoute | None, status_code: int | None, seconds: float
    ) -> None:
        """`status_code` None: the client went away before any answer, which no status code
        describes; the request is no longer in flight, but not timed."""


def _method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "_OTHER"


def _route_label(route: BaseRoute | None) -> str:
    return getattr(route, "path", UNMATCHED_ROUTE)


class _InProcessRequestMetrics(Collector):
    """The request metrics of a single-process service as plain Python numbers, which a scrape
    renders as prometheus-client would render its Histogram and Gauge.

    prometheus-client takes a lock for each bucket, sum and gauge it changes, and walks the
    buckets in Python: the metrics' share of a request's instructions was bigger than that of
    the rest of the request middleware. Nothing here locks: every request is recorded on the
    event loop's thread, and a scrape (rendered in a worker thread) only copies dicts and lists,
    each copy done in C without releasing the GIL.
    """

    def __init__(self) -> None:
        self._active: dict[str, int] = {}
        # Per series: the count of each bucket (not cumulative; +Inf last), then the sum.
        self._durations: dict[tuple[str, str, int], list[float]] = {}

    def started(self, method: str) -> str:
        # Inline rather than _method_label(): a call costs as much again, on every request.
        method = method if method in KNOWN_METHODS else "_OTHER"
        active = self._active
        active[method] = active.get(method, 0) + 1
        return method

    def finished(
        self, method: str, route: BaseRoute | None, status_code: int | None, seconds: float
    ) -> None:
        self._active[method] -= 1
        if status_code is None:
            return
        key = (method, getattr(route, "path", UNMATCHED_ROUTE), status_code)
        series = self._durations.get(key)
        if series is None:
            series = self._durations[key] = [0] * (len(REQUEST_DURATION_BUCKETS) + 1) + [0.0]
        # The first bucket whose bound is >= seconds: prometheus-client's `le`.
        series[bisect_left(REQUEST_DURATION_BUCKETS, seconds)] += 1
        series[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            ACTIVE_REQUESTS_NAME, ACTIVE_REQUESTS_HELP, labels=ACTIVE_REQUESTS_LABELS
        )
        for method, count in self._active.copy().items():
            active.add_metric((method,), count)
        durations = HistogramMetricFamily(
            REQUEST_DURATION_NAME, REQUEST_DURATION_HELP, labels=REQUEST_DURATION_LABELS
        )
        for (method, route, status_code), series in self._durations.copy().items():
            *counts, total = series.copy()
            durations.add_metric(
                (method, route, str(status_code)),
                list(zip(_BUCKET_LABELS, accumulate(counts), strict=True)),
                total,
            )
        yield durations
        yield active


_BUCKET_LABELS = [
    floatToGoString(bound)  # type: ignore[no-untyped-call]
    for bound in (*REQUEST_DURATION_BUCKETS, math.inf)
]


class _FileBackedRequestMetrics:
    """With WORKERS > 1, prometheus-client's own metrics, whose values it keeps in the files
    that a scrape sums."""

    def __init__(self) -> None:
        self._duration = Histogram(
            REQUEST_DURATION_NAME,
            REQUEST_DURATION_HELP,
            REQUEST_DURATION_LABELS,
            buckets=REQUEST_DURATION_BUCKETS,
            registry=None,  # only the files are read: MultiProcessCollector sums them
        )
        self._active = Gauge(
            ACTIVE_REQUESTS_NAME,
            ACTIVE_REQUESTS_HELP,
            ACTIVE_REQUESTS_LABELS,
            registry=None,
            multiprocess_mode="livesum",
        )
        # labels() costs more than an observation: each series is looked up once and kept.
        self._in_flight: dict[str, Gauge] = {}
        self._durations: dict[tuple[str, str, int], Histogram] = {}

    def started(self, method: str) -> str:
        method = _method_label(method)
        in_flight = self._in_flight.get(method)
        if in_flight is None:
            in_flight = self._in_flight[method] = self._active.labels(method)
        in_flight.inc()
        return method

    def finished(
        self, method: str, route: BaseRoute | None, status_code: int | None, seconds: float
    ) -> None:
        self._in_flight[method].dec()
        if status_code is None:
            return
        key = (method, _route_label(route), status_code)
        series = self._durations.get(key)
        if series is None:
            series = self._durations[key] = self._duration.labels(*key[:2], str(status_code))
        series.observe(seconds)


@cache
def request_metrics() -> RequestMetrics:
    """The one recorder of the process: like prometheus-client's metrics, its figures belong
    to the process, whichever app (the tests make many) records them."""
    if is_multiprocess():
        return _FileBackedRequestMetrics()
    recorder = _InProcessRequestMetrics()
    REGISTRY.register(recorder)
    return recorder


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


class _EveryWorkersFiles(multiprocess.MultiProcessCollector):
    """prometheus_client's sum of every worker's files, where a file still empty counts as one
    with nothing recorded: a worker makes its file, then sizes it. A scrape in between failed
    whole (struct.error), and for good if the worker was killed in that moment, its file never
    sized (prometheus/client_python#1199, open)."""

    def collect(self) -> Iterable[Metric]:
        files = [path for path in glob.glob(os.path.join(self._path, "*.db")) if _has_data(path)]
        return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call,no-any-return]


def _has_data(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:  # a stopped worker's live gauges, removed meanwhile
        return False


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
    _EveryWorkersFiles(registry)  # type: ignore[no-untyped-call]
    writer = asyncio.create_task(
        _write_pool_figures(db_pools, http_pools, settings.metrics_sample_seconds)
    )
    try:
        yield registry
    finally:
        writer.cancel()
        # A stopped worker's pools and readiness no longer count; its counters still do.
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
