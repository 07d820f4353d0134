"""Behind PgBouncer in transaction mode (DB_BEHIND_POOLER=true): every transaction may run on
another of PgBouncer's server connections, so no statement may stay prepared between them. A
private PgBouncer per test, with two server connections, so that transactions really hop."""

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg
import pytest
import structlog
from httpx import AsyncClient
from sqlalchemy.engine import make_url

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.resources.schema import SchemaCheck, read_revisions
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import (
    ADMIN_DATABASE_URL,
    admin_execute,
    asyncpg_dsn,
    new_database_url,
    serve,
)
from tests.servers import PrivatePgbouncer, private_pgbouncer

# PgBouncer's server connections per database: fewer than the service's pooled connections.
SERVER_CONNECTIONS = 2
APPLICATION_NAME = "{{ cookiecutter.project_slug }}"


@pytest.fixture
def pgbouncer() -> Iterator[PrivatePgbouncer]:
    """Started outside the event loop (a blocking start); its server connections all new."""
    with private_pgbouncer(ADMIN_DATABASE_URL, pool_size=SERVER_CONNECTIONS) as server:
        yield server


@pytest.fixture
def pooled_url(pgbouncer: PrivatePgbouncer, database_url: str) -> str:
    """The test database, through PgBouncer."""
    database = make_url(database_url).database
    assert database is not None
    return pgbouncer.url(database)


@asynccontextmanager
async def server_connections(pooled_url: str) -> AsyncIterator[list[asyncpg.Connection]]:
    """Connections through PgBouncer, each in a transaction, which holds one of its server
    connections: as many as PgBouncer has, so each holds a different one."""
    async with AsyncExitStack() as stack:
        connections = []
        for _ in range(SERVER_CONNECTIONS):
            # No statement cache: these must not leave prepared statements behind either.
            connection = await asyncpg.connect(asyncpg_dsn(pooled_url), statement_cache_size=0)
            stack.push_async_callback(connection.close)
            await stack.enter_async_context(connection.transaction())
            connections.append(connection)
        yield connections


async def test_the_service_works_behind_pgbouncer_in_transaction_mode(
    make_settings: Callable[..., Settings], pooled_url: str
) -> None:
    settings = make_settings(database_url=pooled_url, db_behind_pooler=True)
    async with serve(create_app(settings)) as client:
        ready = await client.get("/health/ready")  # the schema check included
        created = await client.post("/notes", json={"text": "through pgbouncer"})
        read = await client.get(f"/notes/{created.json()['id']}")
        statuses = await concurrent_load(client, created.json()["id"], requests=200, at_once=32)

    assert ready.status_code == 200, ready.text
    assert ready.json()["resources"]["postgres"]["status"] == "ok"
    assert created.status_code == 201
    assert read.json() == created.json()
    assert statuses == Counter({200: 150, 201: 50})
    async with server_connections(pooled_url) as connections:
        pids = {await connection.fetchval("SELECT pg_backend_pid()") for connection in connections}
        # The service's transactions ran on both server connections, and left no statement
        # prepared on either (a uniquely named one per statement would pile up there).
        assert len(pids) == SERVER_CONNECTIONS
        for connection in connections:
            assert await connection.fetchval("SELECT count(*) FROM pg_prepared_statements") == 0
            # A startup parameter PgBouncer passes on: set on the server connection too.
{%- if cookiecutter.use_rabbitmq %}
            # (The last client's: a request's, or the outbox relay's.)
            assert await connection.fetchval("SHOW application_name") in {
                APPLICATION_NAME,
                f"{APPLICATION_NAME} outbox relay",
            }
{%- else %}
            assert await connection.fetchval("SHOW application_name") == APPLICATION_NAME
{%- endif %}


async def concurrent_load(
    client: AsyncClient, note_id: int, *, requests: int, at_once: int
) -> Counter[int]:
    """`requests` requests, `at_once` at a time: three reads of the note to one write of a new
    one. Their status codes."""
    limit = asyncio.Semaphore(at_once)

    async def one(number: int) -> int:
        async with limit:
            if number % 4 == 0:
                response = await client.post("/notes", json={"text": f"load {number}"})
            else:
                response = await client.get(f"/notes/{note_id}")
            return response.status_code

    return Counter(await asyncio.gather(*(one(number) for number in range(requests))))


@pytest.mark.parametrize("behind_pooler", [False, True])
async def test_a_transaction_on_another_server_connection_needs_db_behind_pooler(
    make_settings: Callable[..., Settings], pooled_url: str, behind_pooler: bool
) -> None:
    # One pooled connection, whose transactions PgBouncer hands to a free server connection.
    settings = make_settings(
        database_url=pooled_url,
        db_pool_size=1,
        db_max_overflow=0,
        db_behind_pooler=behind_pooler,
{%- if cookiecutter.use_rabbitmq %}
        # Its transactions would take server connections at any moment.
        outbox_relay_enabled=False,
{%- endif %}
    )
    async with serve(create_app(settings)) as client:
        created = await client.post("/notes", json={"text": "hop"})
        path = f"/notes/{created.json()['id']}"
        # Its one server connection so far: the read's statement prepared there (when cached).
        first = await client.get(path)
        competitor = await asyncpg.connect(asyncpg_dsn(pooled_url), statement_cache_size=0)
        try:
            # A transaction elsewhere takes that server connection (the only free one), so the
            # same read runs on a new one.
            async with competitor.transaction():
                await competitor.execute("SELECT 1")
                with structlog.testing.capture_logs(
                    processors=[structlog.processors.format_exc_info]
                ) as logged:
                    second = await client.get(path)
        finally:
            await competitor.close()

    assert first.status_code == 200
    if behind_pooler:
        assert second.status_code == 200, second.text
        assert second.json() == first.json()
    else:
        # What DB_BEHIND_POOLER prevents: the cached statement is not on this server connection.
        assert second.status_code == 500
        (error,) = [line for line in logged if line["event"] == "http.unhandled_error"]
        assert "InvalidSQLStatementNameError" in error["exception"]
        assert "does not exist" in error["exception"]


async def applied_revisions(url: str) -> list[str]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return [row[0] for row in await connection.fetch("SELECT version_num FROM alembic_version")]
    finally:
        await connection.close()


def test_the_migrations_run_through_pgbouncer(pgbouncer: PrivatePgbouncer) -> None:
    # The Kubernetes Job reads the service's DATABASE_URL: PgBouncer's, where there is one.
    name, url = new_database_url()
    asyncio.run(admin_execute(f'CREATE DATABASE "{name}"'))
    try:
        migrated, again = (
            subprocess.run(
                [sys.executable, "-m", "{{ cookiecutter.package_name }}.migrate"],
                env={"PATH": "/usr/bin:/bin", "DATABASE_URL": pgbouncer.url(name)},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            for _ in range(2)
        )
        applied = asyncio.run(applied_revisions(url))
    finally:
        asyncio.run(admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    assert (migrated.returncode, again.returncode) == (0, 0), migrated.stderr + again.stderr
    assert set(applied) == SchemaCheck(read_revisions()).heads
