"""Redis: the example cache routes, and a real Redis outage: 503s, then recovery, no restart."""

import asyncio
import uuid
from collections.abc import Callable, Iterator

import pytest
from httpx import AsyncClient
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import assert_answered_unavailable, serve
from tests.servers import PrivateRedis, answers, async_wait_until, private_redis


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    """A Redis of the test's own to stop and start; the test does that off the event loop."""
    with private_redis() as server:
        yield server


async def test_a_value_is_stored_and_read_back(
    client: AsyncClient, worker_thread_calls: list[str]
) -> None:
    key = uuid.uuid4().hex

    assert (await client.get(f"/cache/{key}")).status_code == 404
    stored = await client.put(f"/cache/{key}", json={"value": "hello", "ttl_seconds": 60})
    assert stored.status_code == 200
    fetched = await client.get(f"/cache/{key}")
    assert fetched.json() == {"key": key, "value": "hello"}
    assert worker_thread_calls == []


async def test_an_outage_is_a_503_and_the_service_recovers_without_a_restart(
    redis_server: PrivateRedis, make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{redis_server.port}/0")
    async with serve(create_app(settings)) as client:
        assert (await client.put("/cache/before", json={"value": "1"})).status_code == 200
        assert (await client.get("/cache/before")).status_code == 200

        await asyncio.to_thread(redis_server.stop)
        await async_wait_until(
            answers(client, "/health/ready", 503), within=5, message="readiness stayed 200"
        )
        ready = await client.get("/health/ready")
        live = await client.get("/health/live")
        read = await client.get("/cache/before")
        written = await client.put("/cache/during", json={"value": "2"})

        # Same port, same app: the client reconnects by itself.
        await asyncio.to_thread(redis_server.start)
        after = [
            await client.put("/cache/after", json={"value": "3"}),
            await client.get("/cache/after"),
        ]
        await async_wait_until(
            answers(client, "/health/ready", 200), within=3, message="readiness stayed 503"
        )

    assert ready.json()["resources"]["redis"]["status"] == "unavailable"
    assert live.status_code == 200
    assert_answered_unavailable([read, written], events, "redis")
    # The very first requests after the restart succeed: the client replaced its connections.
    assert [response.status_code for response in after] == [200, 200]
    assert after[1].json() == {"key": "after", "value": "3"}


async def test_a_restart_between_requests_costs_no_request(
    redis_server: PrivateRedis, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{redis_server.port}/0")
    async with serve(create_app(settings)) as client:
        assert (await client.put("/cache/before", json={"value": "1"})).status_code == 200

        # The pooled connection is now one that Redis dropped.
        await asyncio.to_thread(redis_server.stop)
        await asyncio.to_thread(redis_server.start)
        written = await client.put("/cache/after", json={"value": "2"})

    assert written.status_code == 200
