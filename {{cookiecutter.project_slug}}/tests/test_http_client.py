"""The shared HTTP client: calls the upstream, carries the request id, maps upstream failures."""

import json
from collections.abc import Callable

from httpx import AsyncClient

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import serve
from tests.servers import free_port


async def test_the_upstream_is_called_with_the_request_id(client: AsyncClient) -> None:
    response = await client.get("/upstream/echo/this", headers={"X-Request-ID": "trace-42"})

    assert response.status_code == 200
    reply = response.json()
    assert reply["status_code"] == 200
    upstream_saw = json.loads(reply["body"])
    assert upstream_saw["path"] == "/echo/this"
    headers = {name.lower(): value for name, value in upstream_saw["headers"].items()}
    assert headers["x-request-id"] == "trace-42"


async def test_an_unreachable_upstream_is_a_502(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(http_client_base_url=f"http://127.0.0.1:{free_port()}")
    async with serve(create_app(settings)) as client:
        response = await client.get("/upstream/anything")

    assert response.status_code == 502


async def test_without_a_base_url_the_route_is_a_503(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve(create_app(make_settings(http_client_base_url=None))) as client:
        response = await client.get("/upstream/anything")

    assert response.status_code == 503
