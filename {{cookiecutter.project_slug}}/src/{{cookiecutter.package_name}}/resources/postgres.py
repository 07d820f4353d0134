"""PostgreSQL: one pooled SQLAlchemy async engine (asyncpg driver) for the whole process."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InvalidatePoolError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from {{ cookiecutter.package_name }}.resources.lifecycle import lifecycle
from {{ cookiecutter.package_name }}.settings import Settings

# A server that answers but will not serve: shutting down, crashed, starting up, full.
_UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot serve right now (down, restarting, every pooled
    connection busy) rather than that a query is wrong, which stays a 500."""
    if isinstance(exc, DBAPIError):
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
        return (
            exc.connection_invalidated
            or sqlstate.startswith("08")  # connection exceptions
            or sqlstate in _UNAVAILABLE_SQLSTATES
        )
    # asyncpg raises plain OSError (refused, reset) and TimeoutError while it connects.
    return isinstance(exc, OSError | TimeoutError | PoolTimeoutError)


def _replace_if_closed(
    dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    # A restart or failover closes every connection in the pool; asyncpg notices when the
    # server's goodbye arrives. Raising here makes the pool drop this connection and all older
    # ones and hand out a fresh one, with no round trip: `pool_pre_ping` would cost three
    # (BEGIN, a ping, ROLLBACK) on every checkout, as many as a read request needs itself.
    connection = record.driver_connection  # asyncpg's
    if connection is not None and connection.is_closed():
        raise InvalidatePoolError("the server closed this pooled connection")


@asynccontextmanager
async def open_postgres(settings: Settings, deadline: float) -> AsyncIterator[AsyncEngine]:
    url = make_url(settings.database_url.get_secret_value())
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        connect_args={"server_settings": {"application_name": "{{ cookiecutter.project_slug }}"}},
    )
    event.listen(engine.sync_engine, "checkout", _replace_if_closed)
    async with lifecycle(
        "postgres",
        verify=partial(ping, engine),
        close=engine.dispose,
        deadline=deadline,
        close_timeout=settings.shutdown_timeout,
        target={"host": url.host, "port": url.port or 5432, "database": url.database},
    ):
        yield engine
