"""PostgreSQL: one pooled SQLAlchemy async engine (asyncpg driver) for the whole process."""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, cast

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from {{ cookiecutter.package_name }}.metrics import ConnectionCounts
from {{ cookiecutter.package_name }}.resources.lifecycle import (
    ResourceUnavailableError,
    describe,
    lifecycle,
)
from {{ cookiecutter.package_name }}.resources.postgres_pool import MeteredPool
from {{ cookiecutter.package_name }}.resources.schema import SchemaCheck, applied_revisions
from {{ cookiecutter.package_name }}.settings import Settings

# A server that answers but will not serve: shutting down, crashed, starting up, full.
_UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}
# The prepared statements kept per connection by asyncpg, and by SQLAlchemy's asyncpg adapter
# on top (their defaults), unless DB_BEHIND_POOLER is on.
_STATEMENT_CACHE_SIZE = 100
# How much later than the client's DB_COMMAND_TIMEOUT the server's statement_timeout fires.
_SERVER_TIMEOUT_MARGIN = 1.0
# How the service's sessions are named in pg_stat_activity.
APPLICATION_NAME = "{{ cookiecutter.project_slug }}"


async def ping(engine: AsyncEngine, schema: SchemaCheck | None = None) -> None:
    """One statement: `SELECT 1`, or with `schema` the read of the applied migrations in its
    place, which it then compares (NotReadyError while the database is behind them)."""
    async with engine.connect() as connection:
        if schema is None:
            await connection.execute(text("SELECT 1"))
            return
        applied = await applied_revisions(connection)
    schema.compare(applied)


def connection_counts(engine: AsyncEngine) -> ConnectionCounts:
    pool = cast(MeteredPool, engine.pool)
    return ConnectionCounts(used=pool.checkedout(), idle=pool.checkedin(), limit=pool.limit)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc`, raised by the engine, says the database cannot serve right now (down,
    restarting, every pooled connection busy) rather than that a query is wrong, which stays a
    500. (Connect failures and timeouts are raised as `ResourceUnavailableError` already.)"""
    if isinstance(exc, DBAPIError):
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
        return (
            exc.connection_invalidated
            or sqlstate.startswith("08")  # connection exceptions
            or sqlstate in _UNAVAILABLE_SQLSTATES
        )
    return isinstance(exc, PoolTimeoutError)


def _handle_error(context: ExceptionContext) -> None:
    # One dead connection says nothing of the others (`idle_session_timeout`, a terminated
    # backend, a NAT timeout): replace it alone. After a restart each pooled connection is
    # replaced at its next checkout anyway (see `_replace_if_closed`).
    context.invalidate_pool_on_disconnect = False
    error = context.original_exception
    if isinstance(error, TimeoutError):
        # asyncpg's DB_COMMAND_TIMEOUT: the server stopped answering, or a statement waited on a
        # lock. The connection is mid-conversation: it must not go back to the pool.
        context.is_disconnect = True
    if context.is_disconnect and context.connection is not None:
        # SQLAlchemy would first try a polite close, shielded from cancellation, that waits for
        # a silent server for seconds: drop the socket at once instead.
        driver_connection = context.connection.connection.driver_connection  # asyncpg's
        if driver_connection is not None:
            driver_connection.terminate()
    if isinstance(error, TimeoutError):
        raise ResourceUnavailableError("postgres", describe(error))


def _replace_if_closed(
    dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    # A restart or failover closes the pooled connections; asyncpg notices when the server's
    # goodbye arrives. Raising here makes the pool replace this connection (and only this one)
    # before a request gets it, with no round trip: `pool_pre_ping` would cost three (BEGIN, a
    # ping, ROLLBACK) on every checkout, as many as a read request needs itself.
    connection = record.driver_connection  # asyncpg's
    if connection is not None and connection.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


def asyncpg_engine(
    url: URL,
    connect: Callable[[], Awaitable[asyncpg.Connection]],
    prepared_statement_cache_size: int,
    **options: Any,
) -> AsyncEngine:
    """An engine whose connections `connect` opens, so that asyncpg reads the whole URL, its
    options (`?sslmode=require`, ...) included: SQLAlchemy would pass those to asyncpg as
    keyword arguments it does not take. The migrations' engine too."""

    def creator() -> Any:
        # What `async_creator=connect` does, plus the argument of SQLAlchemy's asyncpg adapter,
        # which that cannot pass: the adapter keeps prepared statements of its own, named by
        # asyncpg; with none, each is asyncpg's unnamed one.
        return engine.sync_engine.dialect.loaded_dbapi.connect(
            async_creator_fn=connect, prepared_statement_cache_size=prepared_statement_cache_size
        )

    engine = create_async_engine(url, creator=creator, **options)
    return engine


def asyncpg_dsn(url: URL) -> str:
    """`url` as asyncpg reads it, password included."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _connect(
    url: URL, settings: Settings, application_name: str = APPLICATION_NAME
) -> asyncpg.Connection:
    try:
        connection = await asyncpg.connect(
            asyncpg_dsn(url),
            # The whole connect, TCP and authentication included: a server that accepts the
            # connection and then says nothing must not hold a request.
            timeout=settings.db_connect_timeout,
            # Every statement, commit and rollback: past it the request gets a 503 and the
            # connection is dropped (see `_handle_error`).
            command_timeout=settings.db_command_timeout,
            # Without a cache asyncpg prepares each statement unnamed, and parses it again in
            # the round trip that runs it: nothing stays on the server connection, which a
            # transaction-mode pooler hands to another client after each transaction.
            statement_cache_size=0 if settings.db_behind_pooler else _STATEMENT_CACHE_SIZE,
            # A startup parameter, not a SET: PgBouncer passes application_name (and the
            # client_encoding asyncpg sends) on to every server connection it lends, and
            # refuses startup parameters it does not know.
            server_settings={"application_name": application_name},
        )
        if not settings.db_behind_pooler:
            await _end_statements_the_client_gave_up(connection, settings.db_command_timeout)
    except (OSError, TimeoutError) as exc:
        # Refused, reset or silent: the server is not there. Raised here, where it is certain
        # that the error is the database's, so that an OSError of a handler's own stays a 500.
        raise ResourceUnavailableError("postgres", describe(exc)) from exc
    return connection


async def _end_statements_the_client_gave_up(
    connection: asyncpg.Connection, command_timeout: float
) -> None:
    """A statement past DB_COMMAND_TIMEOUT is the client's 503, and its connection is dropped;
    but that stops no statement: the server would run it on (or wait on its lock), a session
    beyond the pool's count. The server's statement_timeout ends it just after the client gave
    up (not before: cancelled by the server, it would be a 500). Session state, so not behind a
    transaction-mode pooler: set it on the database role there (docs/deployment.md, Scaling
    out)."""
    milliseconds = round((command_timeout + _SERVER_TIMEOUT_MARGIN) * 1000)
    try:
        await connection.execute(f"SET statement_timeout = {milliseconds}")
    except BaseException:
        connection.terminate()
        raise


def _service_engine(
    settings: Settings, url: URL, application_name: str, **pool_options: Any
) -> AsyncEngine:
    engine = asyncpg_engine(
        url,
        partial(_connect, url, settings, application_name),
        # Behind a pooler, none. (A unique name for each statement, which SQLAlchemy's docs
        # show for PgBouncer, would leave every one prepared on a server connection for good.)
        prepared_statement_cache_size=0 if settings.db_behind_pooler else _STATEMENT_CACHE_SIZE,
        **pool_options,
    )
    event.listen(engine.sync_engine, "handle_error", _handle_error)
    event.listen(engine.sync_engine, "checkout", _replace_if_closed)
    return engine
{%- if cookiecutter.use_rabbitmq %}


def dedicated_engine(settings: Settings, role: str) -> AsyncEngine:
    """An engine of one connection, apart from the requests' pool, for a loop of the service
    that must neither wait behind requests nor hold one of their connections while it waits on
    something else; named `<service> <role>` in pg_stat_activity. Its owner disposes of it."""
    url = make_url(settings.database_url.get_secret_value())
    return _service_engine(
        settings,
        url,
        f"{APPLICATION_NAME} {role}",
        pool_size=1,
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout,
    )
{%- endif %}


@asynccontextmanager
async def open_postgres(settings: Settings, deadline: float) -> AsyncIterator[AsyncEngine]:
    url = make_url(settings.database_url.get_secret_value())
    engine = _service_engine(
        settings,
        url,
        APPLICATION_NAME,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        poolclass=MeteredPool,
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
