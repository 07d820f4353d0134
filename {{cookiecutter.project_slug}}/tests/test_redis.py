"""Redis: the example cache routes, and readiness that follows a real Redis outage."""

import uuid
from collections.abc import Callable

from httpx import AsyncClient

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import serve
from tests.servers import private_redis


async def test_a_value_is_stored_and_read_back(client: AsyncClient) -> None:
    key = uuid.uuid4().hex

    assert (await client.get(f"/cache/{key}")).status_code == 404
    stored = await client.put(f"/cache/{key}", json={"value": "hello", "ttl_seconds": 60})
    assert stored.status_code == 200
    fetched = await client.get(f"/cache/{key}")
    assert fetched.json() == {"key": key, "value": "hello"}


async def test_readiness_turns_503_when_redis_stops(make_settings: Callable[..., Settings]) -> None:
    with private_redis() as redis_server:
        settings = make_settings(redis_url=f"redis://127.0.0.1:{redis_server.port}/0")
        async with serve(create_app(settings)) as client:
            assert (await client.get("/health/ready")).status_code == 200

            redis_server.stop()
            ready = await client.get("/health/ready")
            live = await client.get("/health/live")

    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    assert body["resources"]["redis"]["status"] == "unavailable"
    assert live.status_code == 200
