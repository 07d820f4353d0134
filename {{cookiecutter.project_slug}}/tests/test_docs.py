"""GET /docs serves Swagger UI with files of the service's own, so that it works offline; it can
be switched off. (The template this project comes from also opens the page in a headless
browser that can reach no other host, and checks that every operation renders.)"""

import re
from collections.abc import Callable

from httpx import AsyncClient

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import serve

# What the page links to, and where the schema is.
LINKS = re.compile(r"""(?:href|src)="([^"]*)"|url: '([^']*)'""")
CONTENT_TYPES = {
    "/docs/assets/swagger-ui-bundle.js": {"text/javascript", "application/javascript"},
    "/docs/assets/swagger-ui.css": {"text/css"},
    "/docs/assets/favicon-32x32.png": {"image/png"},
    "/openapi.json": {"application/json"},
}


def media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip()


async def test_the_docs_page_loads_only_files_of_the_service(client: AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert media_type(page.headers["content-type"]) == "text/html"
    links = {href or url for href, url in LINKS.findall(page.text)}
    assert links == set(CONTENT_TYPES), "every link is a path on this service, none elsewhere"
    for path, content_types in CONTENT_TYPES.items():
        response = await client.get(path)
        assert response.status_code == 200, path
        assert media_type(response.headers["content-type"]) in content_types, path
        assert response.content, path
    schema = (await client.get("/openapi.json")).json()
    assert "/health/live" in schema["paths"]


async def test_an_unchanged_asset_is_not_sent_again(client: AsyncClient) -> None:
    first = await client.get("/docs/assets/swagger-ui.css")
    # The file names stay the same across Swagger UI versions: always ask, so that an upgrade
    # reaches the browser.
    assert first.headers["cache-control"] == "no-cache"

    again = await client.get(
        "/docs/assets/swagger-ui.css", headers={"if-none-match": first.headers["etag"]}
    )

    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["cache-control"] == "no-cache"


async def test_only_swagger_ui_is_served(client: AsyncClient) -> None:
    # ReDoc's page would load its script and fonts from CDNs.
    assert (await client.get("/redoc")).status_code == 404
    assert (await client.get("/docs/assets/missing.js")).status_code == 404


def test_the_docs_come_after_every_other_route(settings: Settings) -> None:
    # A request tries the routes in order, and each one before its own costs it about 7,000
    # instructions (1.5% of GET /health/live): the docs, asked for now and then, come last.
    paths = [getattr(route, "path", None) for route in create_app(settings).router.routes]
    assert paths[-3:] == ["/openapi.json", "/docs", "/docs/assets"]


async def test_docs_can_be_switched_off(make_settings: Callable[..., Settings]) -> None:
    async with serve(create_app(make_settings(docs_enabled=False))) as client:
        for path in ["/docs", "/openapi.json", *CONTENT_TYPES]:
            assert (await client.get(path)).status_code == 404, path
        assert (await client.get("/health/live")).status_code == 200
