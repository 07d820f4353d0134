"""Redis: the example cache routes, and a real Redis outage: 503s, then recovery, no restart."""

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import cast

import pytest
from httpx import AsyncClient
from redis import Redis as SyncRedis
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.dependencies import RedisClient
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import (
    REDIS_KEY_PREFIX,
    REDIS_URL,
    assert_answered_unavailable,
    delete_keys,
    scrape,
    serve,
)
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
    # Under REDIS_KEY_PREFIX, where the end of the test run deletes it.
    assert await asyncio.to_thread(read_key, f"{REDIS_KEY_PREFIX}cache:{key}") == b"hello"


def read_key(key: str) -> bytes | None:
    with SyncRedis.from_url(REDIS_URL) as redis:
        return cast(bytes | None, redis.get(key))


def test_a_prefix_s_keys_are_deleted_and_no_other() -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    with SyncRedis.from_url(REDIS_URL) as redis:
        redis.set(f"{prefix}a", "1", ex=60)
        redis.set(f"{prefix}b", "2", ex=60)
        redis.set(f"other-{prefix}", "3", ex=60)
        assert delete_keys(prefix) == 2
        assert redis.exists(f"{prefix}a", f"{prefix}b") == 0
        assert redis.get(f"other-{prefix}") == b"3"
        redis.delete(f"other-{prefix}")


async def test_an_outage_is_a_503_and_the_service_recovers_without_a_restart(
    redis_server: PrivateRedis, make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{redis_server.port}/0")
    async with serve(create_app(settings)) as client:
        assert (await client.put("/cache/before", json={"value": "1"})).status_code == 200
        assert (await client.get("/cache/before")).status_code == 200
        before = await scrape(client)

        await asyncio.to_thread(redis_server.stop)
        await async_wait_until(
            answers(client, "/health/ready", 503), within=5, message="readiness stayed 200"
        )
        ready = await client.get("/health/ready")
        live = await client.get("/health/live")
        read = await client.get("/cache/before")
        written = await client.put("/cache/during", json={"value": "2"})
        during = await scrape(client)

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
    unavailable = {"name": "resource_unavailable_total", "resource": "redis"}
    assert during.value(**unavailable) == before.value(**unavailable) + 2
    assert during.value("resource_up", resource="redis") == 0
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


async def test_pool_figures_are_redis_pys_own(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_socket_timeout=5.0)
    app = create_app(settings)
    pool = {"db_client_connection_pool_name": "redis"}

    @app.get("/test/blpop/{key}")
    async def blpop(key: str, redis: RedisClient) -> None:
        await redis.blpop([key], timeout=1)  # holds its connection for a second

    async def connections(state: str) -> float:
        scraped = await scrape(client)
        return scraped.value("db_client_connection_count", **pool, db_client_connection_state=state)

    async with serve(app) as client:
        assert (await client.get(f"/cache/{uuid.uuid4().hex}")).status_code == 404
        idle_before = await connections("idle")
        blocked = asyncio.create_task(client.get(f"/test/blpop/{uuid.uuid4().hex}"))

        async def one_used() -> bool:
            return await connections("used") == 1

        await async_wait_until(one_used, within=1, message="BLPOP held no connection")
        assert (await blocked).status_code == 200
        used_after = await connections("used")
        limit = (await scrape(client)).value("db_client_connection_max", **pool)

    assert idle_before >= 1
    assert used_after == 0
    assert limit == settings.redis_max_connections
