"""PostgreSQL: one pooled SQLAlchemy async engine (asyncpg driver) for the whole process."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from {{ cookiecutter.package_name }}.resources.lifecycle import lifecycle
from {{ cookiecutter.package_name }}.settings import Settings


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


@asynccontextmanager
async def open_postgres(settings: Settings, deadline: float) -> AsyncIterator[AsyncEngine]:
    url = make_url(settings.database_url.get_secret_value())
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        # A connection the server dropped (restart, failover) is replaced before a request gets it.
        pool_pre_ping=True,
        connect_args={"server_settings": {"application_name": "{{ cookiecutter.project_slug }}"}},
    )
    async with lifecycle(
        "postgres",
        verify=partial(ping, engine),
        close=engine.dispose,
        deadline=deadline,
        close_timeout=settings.shutdown_timeout,
        target={"host": url.host, "port": url.port or 5432, "database": url.database},
    ):
        yield engine
