"""Fixtures that run the real lifespan against real servers.

DATABASE_URL (an admin URL: the run creates its own database and drops it) and REDIS_URL come
from the environment and default to the local servers.
"""

{% if cookiecutter.use_postgres -%}
import asyncio
{% endif -%}
{% if cookiecutter.use_postgres or cookiecutter.use_redis -%}
import os
{% endif -%}
{% if cookiecutter.use_postgres -%}
import uuid
{% endif -%}
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

{% if cookiecutter.use_postgres -%}
import asyncpg
{% endif -%}
import pytest
import structlog
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
{%- if cookiecutter.use_postgres %}
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
{%- endif %}
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
{%- if cookiecutter.use_postgres %}
from {{ cookiecutter.package_name }}.models import Base
{%- endif %}
from {{ cookiecutter.package_name }}.settings import Settings
{%- if cookiecutter.use_http_client %}
from tests.servers import upstream_server
{%- endif %}

{% set resources = (["postgres"] if cookiecutter.use_postgres else [])
    + (["redis"] if cookiecutter.use_redis else [])
    + (["http_client"] if cookiecutter.use_http_client else []) -%}
# The resources this service opens, in lifespan order.
RESOURCES: list[str] = {{ resources | tojson }}
{%- if cookiecutter.use_postgres %}

ADMIN_DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
{%- endif %}
{%- if cookiecutter.use_redis %}
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
{%- endif %}
{%- if cookiecutter.use_postgres %}


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of this test run's own, with the schema created, dropped at the end."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin_dsn = asyncpg_dsn(ADMIN_DATABASE_URL)
    url = make_url(ADMIN_DATABASE_URL).set(drivername="postgresql+asyncpg", database=name)
    url_text = url.render_as_string(hide_password=False)

    async def create() -> None:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        engine = create_async_engine(url)
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        await engine.dispose()

    async def drop() -> None:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(create())
    try:
        yield url_text
    finally:
        asyncio.run(drop())
{%- endif %}
{%- if cookiecutter.use_http_client %}


@pytest.fixture(scope="session")
def upstream_url() -> Iterator[str]:
    with upstream_server() as url:
        yield url
{%- endif %}


@pytest.fixture
{%- set servers = (["database_url: str"] if cookiecutter.use_postgres else [])
    + (["upstream_url: str"] if cookiecutter.use_http_client else []) %}
def make_settings({{ servers | join(", ") }}) -> Callable[..., Settings]:
    """Settings pointing at the test servers; keyword arguments override single fields."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "startup_timeout": 5.0,
{%- if cookiecutter.use_postgres %}
            "database_url": database_url,
{%- endif %}
{%- if cookiecutter.use_redis %}
            "redis_url": REDIS_URL,
{%- endif %}
{%- if cookiecutter.use_http_client %}
            "http_client_base_url": upstream_url,
{%- endif %}
        }
        return Settings(_env_file=None, **(values | overrides))

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def events() -> Iterator[list[EventDict]]:
    """The structlog events logged during the test, as dicts."""
    # merge_contextvars adds what the middleware binds (the request id), as in production.
    merge_context = structlog.contextvars.merge_contextvars
    with structlog.testing.capture_logs(processors=[merge_context]) as captured:
        yield captured


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[AsyncClient]:
    """Run `app`'s real lifespan and talk to it in-process."""
    async with (
        LifespanManager(app) as manager,
        AsyncClient(
            transport=ASGITransport(manager.app, raise_app_exceptions=False),
            base_url="http://testserver",
        ) as client,
    ):
        yield client


@pytest.fixture
async def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with serve(app) as client:
        yield client
