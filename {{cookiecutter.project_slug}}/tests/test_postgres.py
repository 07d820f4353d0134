"""PostgreSQL: one session per request, committed before the response, rolled back on error."""

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from fastapi import FastAPI, HTTPException
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.engine import make_url

from {{ cookiecutter.package_name }}.dependencies import DbSession, Postgres
from {{ cookiecutter.package_name }}.models import Note
from tests.conftest import ADMIN_DATABASE_URL, asyncpg_dsn


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, outside the app's pool, to see what was committed."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield connection
    finally:
        await connection.close()


async def test_a_note_is_created_and_read_back(client: AsyncClient) -> None:
    created = await client.post("/notes", json={"text": "hello"})

    assert created.status_code == 201
    note = created.json()
    assert note["text"] == "hello"
    fetched = await client.get(f"/notes/{note['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == note


async def test_a_missing_note_is_404_and_bad_input_is_422(client: AsyncClient) -> None:
    assert (await client.get("/notes/999999999")).status_code == 404
    assert (await client.post("/notes", json={"text": ""})).status_code == 422


async def test_the_commit_is_visible_to_other_connections(
    client: AsyncClient, database: asyncpg.Connection
) -> None:
    marker = uuid.uuid4().hex

    response = await client.post("/notes", json={"text": marker})

    assert response.status_code == 201
    assert await database.fetchval("SELECT count(*) FROM notes WHERE text = $1", marker) == 1


async def test_a_handler_that_raises_rolls_back(
    app: FastAPI, client: AsyncClient, database: asyncpg.Connection
) -> None:
    marker = uuid.uuid4().hex

    @app.post("/test/write-then-fail")
    async def write_then_fail(session: DbSession) -> None:
        session.add(Note(text=marker))
        await session.flush()
        raise HTTPException(409, "conflict after writing")

    response = await client.post("/test/write-then-fail")

    assert response.status_code == 409
    assert await database.fetchval("SELECT count(*) FROM notes WHERE text = $1", marker) == 0


async def test_a_failing_commit_is_a_500_not_a_success(
    app: FastAPI, client: AsyncClient, database: asyncpg.Connection
) -> None:
    # A deferred constraint is only checked at COMMIT: the handler itself succeeds.
    table = f"deferred_{uuid.uuid4().hex[:8]}"
    await database.execute(f"CREATE TABLE {table} (value int UNIQUE DEFERRABLE INITIALLY DEFERRED)")

    @app.post("/test/commit-fails")
    async def commit_fails(session: DbSession) -> dict[str, str]:
        await session.execute(text(f"INSERT INTO {table} (value) VALUES (1), (1)"))  # noqa: S608
        return {"status": "written"}

    response = await client.post("/test/commit-fails")

    assert response.status_code == 500
    assert await database.fetchval(f"SELECT count(*) FROM {table}") == 0  # noqa: S608


async def test_sessions_are_closed_and_no_transaction_is_left_open(
    app: FastAPI, client: AsyncClient, database: asyncpg.Connection
) -> None:
    @app.get("/test/checked-out")
    async def checked_out(engine: Postgres) -> int:
        pool_status: int = engine.pool.checkedout()  # type: ignore[attr-defined]
        return pool_status

    for _ in range(5):
        await client.post("/notes", json={"text": "x"})
        await client.get("/notes/999999999")

    assert (await client.get("/test/checked-out")).json() == 0
    idle_in_transaction = await database.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
    )
    assert idle_in_transaction == 0


async def test_readiness_follows_the_database(client: AsyncClient, database_url: str) -> None:
    name = make_url(database_url).database
    assert (await client.get("/health/ready")).status_code == 200

    # A real outage for this database: the server refuses new connections and drops open ones.
    admin = await asyncpg.connect(asyncpg_dsn(ADMIN_DATABASE_URL))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        down = await client.get("/health/ready")
        live = await client.get("/health/live")
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()

    assert down.status_code == 503
    assert down.json()["resources"]["postgres"]["status"] == "unavailable"
    assert live.status_code == 200
    assert (await client.get("/health/ready")).status_code == 200
