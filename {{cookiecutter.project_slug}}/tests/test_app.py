"""The app as a client sees it: health probes, request ids, and an app that opens nothing."""

from collections.abc import Callable

import pytest
import structlog
from fastapi import FastAPI
from fastapi.routing import APIRoute
from httpx import ASGITransport, AsyncClient
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import RESOURCES, serve


async def test_liveness_touches_no_resource(settings: Settings) -> None:
    # Without its lifespan the app has no resources at all: only a probe that needs none answers.
    app = create_app(settings)
    transport = ASGITransport(app, raise_app_exceptions=False)
    async with AsyncClient(transport=transport, base_url="http://testserver") as client:
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")

    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.status_code == 500


async def test_readiness_reports_every_resource(
    client: AsyncClient, worker_thread_calls: list[str]
) -> None:
    response = await client.get("/health/ready")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert list(body["resources"]) == RESOURCES
    for check in body["resources"].values():
        assert check["status"] == "ok"
        assert check["latency_ms"] >= 0
    assert worker_thread_calls == []


def test_the_probes_are_the_first_routes_and_behind_no_router(settings: Settings) -> None:
    # Each route before them, and an included router's routing layer, would cost every probe.
    first = create_app(settings).routes[:2]

    assert [(type(route), getattr(route, "path", None)) for route in first] == [
        (APIRoute, "/health/live"),
        (APIRoute, "/health/ready"),
    ]
    openapi = create_app(settings).openapi()
    assert openapi["paths"]["/health/live"]["get"]["tags"] == ["health"]


def test_creating_an_app_opens_nothing(
    make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    create_app(make_settings())
    create_app(make_settings())

    assert events == []


async def test_request_id_is_echoed_and_bound_to_the_request_log(
    client: AsyncClient, events: list[EventDict]
) -> None:
    response = await client.get("/health/live", headers={"X-Request-ID": "req-123"})

    assert response.headers["X-Request-ID"] == "req-123"
    [request_log] = [e for e in events if e["event"] == "http.request"]
    assert request_log["request_id"] == "req-123"
    assert request_log["status"] == 200
    assert request_log["path"] == "/health/live"
    assert request_log["log_level"] == "debug"  # a probe: PROBE_LOG_LEVEL


@pytest.mark.parametrize(
    ("probe_log_level", "path", "logged_at"),
    [
        ("DEBUG", "/health/live", "debug"),
        ("DEBUG", "/health/ready", "debug"),
        ("DEBUG", "/metrics", "debug"),  # a scrape: the same
        ("DEBUG", "/not-a-probe", "info"),
        ("INFO", "/health/live", "info"),
        ("WARNING", "/health/ready", "warning"),
    ],
)
async def test_probes_are_logged_at_their_own_level(
    make_settings: Callable[..., Settings],
    events: list[EventDict],
    probe_log_level: str,
    path: str,
    logged_at: str,
) -> None:
    async with serve(create_app(make_settings(probe_log_level=probe_log_level))) as client:
        await client.get(path)

    [request_log] = [e for e in events if e["event"] == "http.request"]
    assert (request_log["path"], request_log["log_level"]) == (path, logged_at)


@pytest.mark.parametrize("bad_id", ["x" * 1000, "bad\x01id", "two words", ""])
async def test_a_malformed_request_id_is_replaced(client: AsyncClient, bad_id: str) -> None:
    response = await client.get("/health/live", headers={"X-Request-ID": bad_id})

    new_id = response.headers["X-Request-ID"]
    assert new_id != bad_id
    assert len(new_id) == 32


async def test_each_request_gets_its_own_id_and_none_leaks_out(
    client: AsyncClient, events: list[EventDict]
) -> None:
    first = await client.get("/health/live")
    second = await client.get("/health/live")

    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]
    logged = [e["request_id"] for e in events if e["event"] == "http.request"]
    assert logged == [first.headers["X-Request-ID"], second.headers["X-Request-ID"]]
    structlog.get_logger().info("after.requests")
    assert "request_id" not in events[-1]


async def test_an_unhandled_error_is_a_500_with_the_request_id(
    app: FastAPI, client: AsyncClient, events: list[EventDict]
) -> None:
    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    response = await client.get("/boom")

    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error"}
    request_id = response.headers["X-Request-ID"]
    [error] = [e for e in events if e["event"] == "http.unhandled_error"]
    assert error["request_id"] == request_id
    assert error["exc_info"] is True
    [request_log] = [e for e in events if e["event"] == "http.request"]
    assert (request_log["status"], request_log["request_id"]) == (500, request_id)
