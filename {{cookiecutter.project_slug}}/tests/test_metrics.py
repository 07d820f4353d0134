{%- set pools = cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_http_client -%}
"""GET /metrics: requests under their route templates, in-flight requests, each resource's life,
the sum of every worker, and nothing at all when metrics are off."""

import asyncio
{% if pools -%}
import contextlib
import os
{% endif -%}
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Histogram, generate_latest
{%- if pools %}
from prometheus_client.mmap_dict import MmapedDict
{%- endif %}
from starlette.routing import Route

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.metrics import (
    ACTIVE_REQUESTS_HELP,
    ACTIVE_REQUESTS_LABELS,
    ACTIVE_REQUESTS_NAME,
    KNOWN_METHODS,
    REQUEST_DURATION_BUCKETS,
    REQUEST_DURATION_HELP,
    REQUEST_DURATION_LABELS,
    REQUEST_DURATION_NAME,
    UNMATCHED_ROUTE,
    _InProcessRequestMetrics,
)
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import RESOURCES, Scrape, scrape, serve
from tests.processes import {{ "children, " if pools }}finish, running, url, wait_until_ready
from tests.servers import wait_until

DURATION_COUNT = "http_server_request_duration_seconds_count"


def requests_counted(scraped: Scrape, route: str, status: str, method: str = "GET") -> float:
    return scraped.value(
        DURATION_COUNT,
        http_request_method=method,
        http_route=route,
        http_response_status_code=status,
    )


def add_item_route(app: FastAPI) -> FastAPI:
    @app.get("/test/items/{item_id}")
    async def item(item_id: int) -> int:
        return item_id

    return app


async def test_each_request_is_counted_once_under_its_route_template(settings: Settings) -> None:
    async with serve(add_item_route(create_app(settings))) as client:
        before = await scrape(client)
        for item_id in (1, 2, 3):
            assert (await client.get(f"/test/items/{item_id}")).status_code == 200
        assert (await client.get("/test/items/not-a-number")).status_code == 422
        after = await scrape(client)

    template = "/test/items/{item_id}"
    counted = requests_counted(after, template, "200") - requests_counted(before, template, "200")
    assert counted == 3
    assert requests_counted(after, template, "422") - requests_counted(before, template, "422") == 1
    # Never the raw path: one series per route, however many items there are.
    item_routes = {r for r in after.label_values(DURATION_COUNT, "http_route") if "items" in r}
    assert item_routes == {template}


async def test_unmatched_paths_and_unknown_methods_cannot_grow_the_series(
    client: httpx.AsyncClient,
) -> None:
    before = await scrape(client)
    scanned = ["/.env", "/wp-login.php", "/admin/../etc/passwd", "/random/7f3a9c"]
    for path in scanned:
        assert (await client.get(path)).status_code == 404
    await client.request("BREW", "/health/live")
    after = await scrape(client)

    unmatched = requests_counted(after, "unmatched", "404") - requests_counted(
        before, "unmatched", "404"
    )
    assert unmatched == len(scanned)
    routes = after.label_values(DURATION_COUNT, "http_route")
    assert not routes.intersection(scanned)
    methods = after.label_values(DURATION_COUNT, "http_request_method")
    assert methods <= {*KNOWN_METHODS, "_OTHER"}
    assert (
        requests_counted(after, "/health/live", "405", method="_OTHER")
        == requests_counted(before, "/health/live", "405", method="_OTHER") + 1
    )


async def test_requests_in_flight_are_counted_until_they_answer(settings: Settings) -> None:
    app = create_app(settings)
    entered, release = asyncio.Event(), asyncio.Event()

    @app.get("/test/wait")
    async def wait() -> None:
        entered.set()
        await release.wait()

    async def in_flight() -> float:
        return (await scrape(client)).value(
            "http_server_active_requests", http_request_method="GET"
        )

    async with serve(app) as client:
        alone = await in_flight()  # a scrape is itself a request in flight
        waiting = asyncio.create_task(client.get("/test/wait"))
        await asyncio.wait_for(entered.wait(), timeout=5)
        during = await in_flight()
        release.set()
        await waiting
        after = await in_flight()

    assert (alone, during, after) == (1, 2, 1)


async def endpoint() -> None:
    pass


ITEM_ROUTE = Route("/items/{item_id}", endpoint)
# (method, route, status code, seconds): on a bucket's bound, either side of one, beyond the
# last, an unknown method, an unmatched path, a client gone before the answer (no status).
REQUESTS = [
    ("GET", ITEM_ROUTE, 200, 0.005),
    ("GET", ITEM_ROUTE, 200, 0.0050001),
    ("GET", ITEM_ROUTE, 200, 0.0),
    ("GET", ITEM_ROUTE, 200, 0.3),
    ("GET", ITEM_ROUTE, 200, 10.0),
    ("GET", ITEM_ROUTE, 200, 42.5),
    ("GET", ITEM_ROUTE, 404, 0.02),
    ("POST", ITEM_ROUTE, 201, 1.25),
    ("BREW", ITEM_ROUTE, 405, 0.001),
    ("GET", None, 404, 0.002),
    ("GET", ITEM_ROUTE, None, 0.7),
]


def test_in_process_metrics_render_as_prometheus_client_would() -> None:
    """The recorder a single-process service uses in place of prometheus-client's Histogram
    and Gauge, against those, fed the same requests."""
    expected = CollectorRegistry()
    duration = Histogram(
        REQUEST_DURATION_NAME,
        REQUEST_DURATION_HELP,
        REQUEST_DURATION_LABELS,
        buckets=REQUEST_DURATION_BUCKETS,
        registry=expected,
    )
    active = Gauge(
        ACTIVE_REQUESTS_NAME, ACTIVE_REQUESTS_HELP, ACTIVE_REQUESTS_LABELS, registry=expected
    )
    recorder = _InProcessRequestMetrics()
    rendered = CollectorRegistry()
    rendered.register(recorder)

    unfinished = ("PUT", ITEM_ROUTE, 200, 0.1)  # still in flight at the scrape
    for method, *_ in [*REQUESTS, unfinished]:
        label = method if method in KNOWN_METHODS else "_OTHER"
        active.labels(label).inc()
        assert recorder.started(method) == label
    for method, route, status, seconds in REQUESTS:
        label = method if method in KNOWN_METHODS else "_OTHER"
        active.labels(label).dec()
        if status is not None:
            path = route.path if route is not None else UNMATCHED_ROUTE
            duration.labels(label, path, str(status)).observe(seconds)
        recorder.finished(label, route, status, seconds)

    assert generate_latest(rendered).decode() == generate_latest(expected).decode()
    # Not one family empty by chance: both hold every series above.
    assert 'http_route="unmatched"' in generate_latest(rendered).decode()
    assert 'http_request_method="_OTHER"' in generate_latest(rendered).decode()


async def registry_value(name: str, **labels: str) -> float:
    """A sample of this process's registry, for when no app serves /metrics. In a worker
    thread: collecting reads the process's figures from /proc."""
    value = await asyncio.to_thread(REGISTRY.get_sample_value, name, labels)
    return value or 0.0


async def test_each_resource_counts_its_opening_closing_and_readiness(
    settings: Settings,
) -> None:
    opened_before = {r: await registry_value("resource_opens_total", resource=r) for r in RESOURCES}
    closed_before = {
        r: await registry_value("resource_closes_total", resource=r, outcome="ok")
        for r in RESOURCES
    }
    async with serve(create_app(settings)) as client:
        assert (await client.get("/health/ready")).status_code == 200
        scraped = await scrape(client)

    for resource in RESOURCES:
        opened = scraped.value("resource_opens_total", resource=resource)
        assert opened == opened_before[resource] + 1
        assert scraped.value("resource_up", resource=resource) == 1
        assert scraped.value("resource_open_duration_seconds", resource=resource) > 0
        closed = await registry_value("resource_closes_total", resource=resource, outcome="ok")
        assert closed == closed_before[resource] + 1


async def test_with_metrics_off_nothing_is_served_or_counted(
    make_settings: Callable[..., Settings],
) -> None:
    labels = {"http_request_method": "GET", "http_route": "/health/live"}
    before = await registry_value(DURATION_COUNT, **labels, http_response_status_code="200")
    async with serve(create_app(make_settings(metrics_enabled=False))) as client:
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/metrics")).status_code == 404

    after = await registry_value(DURATION_COUNT, **labels, http_response_status_code="200")
    assert after == before


def default_pool_limit() -> int:
    fields = Settings.model_fields
    return int(fields["db_pool_size"].default) + int(fields["db_max_overflow"].default)


def with_two_workers(service_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The service's environment for two workers, their metric files under tmp_path/tmp."""
    (tmp_path / "tmp").mkdir()
    return service_env | {
        "WORKERS": "2",
        "METRICS_SAMPLE_SECONDS": "0.1",
        "TMPDIR": str(tmp_path / "tmp"),  # where the workers' metric files go
    }


def test_one_scrape_sums_every_worker(service_env: dict[str, str], tmp_path: Path) -> None:
    requests = 40
    service_env = with_two_workers(service_env, tmp_path)
    with running("python -m", service_env, tmp_path) as service:
        wait_until_ready(service, service_env["PORT"])
        # What a worker killed between making its file and sizing it leaves for good (no pid is
        # above 2**22 on Linux): prometheus_client's own collector fails every scrape on it.
        (metric_files,) = (tmp_path / "tmp").glob("metrics-*")
        (metric_files / "counter_4194305.db").touch()
        for _ in range(requests):
            # A connection per request, so that both workers may take some.
            assert httpx.get(url(service_env, "/health/live")).status_code == 200

        def every_worker_reported() -> bool:
            scraped = Scrape(httpx.get(url(service_env, "/metrics")).text)
            pools = "postgres" not in RESOURCES or (
                scraped.value("db_client_connection_max", db_client_connection_pool_name="postgres")
                == 2 * default_pool_limit()
            )
            return pools and all(
                scraped.value("resource_opens_total", resource=resource) == 2
                for resource in RESOURCES
            )

        wait_until(every_worker_reported, timeout=10, message="a worker's figures are missing")
        scraped = Scrape(httpx.get(url(service_env, "/metrics")).text)
        had_files = any((tmp_path / "tmp").iterdir())
        service.process.send_signal(signal.SIGTERM)
        returncode, _, stderr = finish(service)

    assert requests_counted(scraped, "/health/live", "200") == requests
    assert returncode == 0, stderr
    assert had_files
    assert not any((tmp_path / "tmp").iterdir()), "the metric files outlived the service"

{%- if pools %}


def worker_pids(pid: int) -> set[int]:
    """uvicorn's workers of the service `pid` (multiprocessing's resource tracker aside)."""
    workers = set()
    for child in children(pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.add(child)
    return workers


def connection_limits(env: dict[str, str]) -> dict[str, float]:
    """Every `*_connection_max` sample of one scrape: what a dead worker's files would double."""
    scraped = Scrape(httpx.get(url(env, "/metrics")).text)
    return {
        f"{name}{sorted(labels)}": value
        for (name, labels), value in scraped.samples.items()
        if name.endswith("_connection_max")
    }


def wrote_its_limits(metric_files: Path, pid: int) -> bool:
    """Whether worker `pid` has written its pools' limits to its live gauges' file."""
    path = metric_files / f"gauge_livesum_{pid}.db"
    if not path.exists() or path.stat().st_size == 0:  # made, not yet sized
        return False
    values = MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
    return any("_connection_max" in key for key, *_ in values)


def test_a_worker_that_dies_leaves_the_scrape(service_env: dict[str, str], tmp_path: Path) -> None:
    service_env = with_two_workers(service_env, tmp_path)
    with running("python -m", service_env, tmp_path) as service:
        wait_until_ready(service, service_env["PORT"])
        wait_until(
            lambda: len(worker_pids(service.process.pid)) == 2, timeout=10, message="two workers"
        )
        (metric_files,) = (tmp_path / "tmp").glob("metrics-*")
        victim, survivor = sorted(worker_pids(service.process.pid))
        wait_until(
            lambda: all(wrote_its_limits(metric_files, pid) for pid in (victim, survivor)),
            timeout=10,
            message="a worker never wrote its pools' figures",
        )
        before = connection_limits(service_env)
        os.kill(victim, signal.SIGKILL)  # as the OOM killer does

        def replaced() -> bool:
            workers = worker_pids(service.process.pid)
            return len(workers) == 2 and victim not in workers

        wait_until(replaced, timeout=30, message="the dead worker was not replaced")
        (newcomer,) = worker_pids(service.process.pid) - {survivor}
        wait_until(
            lambda: wrote_its_limits(metric_files, newcomer),
            timeout=30,
            message="the new worker never wrote its pools' figures",
        )
        wait_until_ready(service, service_env["PORT"])
        after = connection_limits(service_env)
        dead_files = sorted(path.name for path in metric_files.glob(f"gauge_live*_{victim}.db"))
        service.process.send_signal(signal.SIGTERM)  # the workers with it
        returncode, _, stderr = finish(service)

    assert returncode == 0, stderr
    assert before  # the pools' limits are there to be doubled
    assert after == before
    assert dead_files == []
{%- endif %}
