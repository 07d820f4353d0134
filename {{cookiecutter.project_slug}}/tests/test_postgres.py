"""PostgreSQL: one session per request, committed before the response, rolled back on error;
outages are 503s that end without a restart, and the pool is bounded and never leaks."""

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import asyncpg
import httpx
import pytest
import uvicorn
from alembic import command
from fastapi import FastAPI, HTTPException
from httpx import AsyncClient
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, Pool
from sqlalchemy.util.queue import Empty
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.dependencies import DbSession, Postgres
from {{ cookiecutter.package_name }}.metrics import DB_POOL_PENDING, POOL_LABELS
from {{ cookiecutter.package_name }}.models import Note
from {{ cookiecutter.package_name }}.resources.postgres import open_postgres
from {{ cookiecutter.package_name }}.resources.postgres_pool import FirstComeQueue
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import (
    ADMIN_DATABASE_URL,
    alembic_config,
    assert_answered_unavailable,
    asyncpg_dsn,
    scrape,
    serve,
)
from tests.servers import (
    PrivatePostgres,
    answers,
    async_wait_until,
    free_port,
    private_postgres,
)

UNAVAILABLE = {"detail": "postgres is unavailable"}


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, outside the app's pool, to see what was committed."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this module's own, with the schema, that tests stop and start."""
    with private_postgres() as server:
        with alembic_config(server.url) as config:
            command.upgrade(config, "head")
        yield server


@pytest.fixture
def stoppable_server(private_server: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """The private server, running again after the test whatever the test did."""
    yield private_server
    if not private_server.running:
        private_server.start()


def add_test_routes(app: FastAPI) -> FastAPI:
    """Routes that hold a pooled connection for a while, and count the pool's connections."""

    @app.get("/test/hold")
    async def hold(session: DbSession, seconds: float) -> None:
        await session.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": seconds})

    @app.get("/test/checked-out")
    async def checked_out(engine: Postgres) -> int:
        connections: int = engine.pool.checkedout()  # type: ignore[attr-defined]
        return connections

    @app.get("/test/checked-in")
    async def checked_in(engine: Postgres) -> int:
        connections: int = engine.pool.checkedin()  # type: ignore[attr-defined]
        return connections

    return app


def add_signalling_hold(app: FastAPI, seconds: float) -> asyncio.Event:
    """A route, /test/hold-and-signal, that sets the event it returns once its session holds a
    connection, then keeps it `seconds` in a query."""
    holding = asyncio.Event()

    @app.get("/test/hold-and-signal")
    async def hold_and_signal(session: DbSession) -> None:
        await session.execute(text("SELECT 1"))
        holding.set()
        await session.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": seconds})

    return holding


async def idle_in_transaction(database: asyncpg.Connection) -> int:
    """Sessions of the requests' pool that a transaction left open: a leaked connection."""
    sessions: int = await database.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
        # Not the outbox relay's, whose pass is idle in its transaction while the broker confirms.
        " AND application_name = '{{ cookiecutter.project_slug }}'"
    )
    return sessions


async def test_a_note_is_created_and_read_back(
    client: AsyncClient, worker_thread_calls: list[str]
) -> None:
    created = await client.post("/notes", json={"text": "hello"})

    assert created.status_code == 201
    note = created.json()
    assert note["text"] == "hello"
    fetched = await client.get(f"/notes/{note['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == note
    assert worker_thread_calls == []


async def test_a_missing_note_is_404_and_bad_input_is_422_without_the_input(
    client: AsyncClient,
) -> None:
    too_long = "not-echoed-" + "x" * 1000

    missing = await client.get("/notes/999999999")
    invalid = await client.post("/notes", json={"text": too_long})

    assert missing.status_code == 404
    assert invalid.status_code == 422
    [error] = invalid.json()["detail"]
    assert (error["type"], error["loc"]) == ("string_too_long", ["body", "text"])
    assert set(error) == {"type", "loc", "msg"}
    assert "not-echoed" not in invalid.text


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


async def test_a_handlers_own_os_and_timeout_errors_are_500s_not_outages(
    app: FastAPI, client: AsyncClient, events: list[EventDict]
) -> None:
    @app.get("/test/file-error")
    async def file_error(session: DbSession) -> None:
        await session.execute(text("SELECT 1"))
        await asyncio.to_thread(Path("/nonexistent/file").read_text)

    @app.get("/test/own-timeout")
    async def own_timeout(session: DbSession) -> None:
        await session.execute(text("SELECT 1"))
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)

    responses = [await client.get("/test/file-error"), await client.get("/test/own-timeout")]

    assert [response.status_code for response in responses] == [500, 500]
    assert [e for e in events if e["event"] == "resource.unavailable"] == []


@asynccontextmanager
async def counting_new_connections() -> AsyncIterator[list[object]]:
    """Every connection any pool opens meanwhile."""
    opened: list[object] = []

    def count(dbapi_connection: object, record: object) -> None:
        opened.append(dbapi_connection)

    event.listen(Pool, "connect", count)
    try:
        yield opened
    finally:
        event.remove(Pool, "connect", count)


async def test_one_terminated_backend_costs_one_new_connection(
    make_settings: Callable[..., Settings], database: asyncpg.Connection
) -> None:
    pooled = 4
    app = add_test_routes(create_app(make_settings(db_pool_size=pooled)))
    backends = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = '{{ cookiecutter.project_slug }}'"
    )
    async with serve(app) as client:
        await asyncio.gather(*(client.get("/test/hold?seconds=0.2") for _ in range(pooled)))
        assert (await client.get("/test/checked-in")).json() == pooled
        [victim, *_] = [row["pid"] for row in await database.fetch(backends)]

        async with counting_new_connections() as opened:
            # Waits until the backend has exited, and so closed its end of the connection.
            assert await database.fetchval("SELECT pg_terminate_backend($1, 5000)", victim)

            async def gone() -> bool:
                return victim not in [row["pid"] for row in await database.fetch(backends)]

            await async_wait_until(gone, within=5, message="the backend was never terminated")
            # One after another: the pool hands out its connections in turn, so each is
            # checked out at least once after the dead one was found.
            after = [await client.get("/notes/999999999") for _ in range(2 * pooled)]

    assert [response.status_code for response in after] == [404] * 2 * pooled
    # The dead connection is replaced, and the healthy ones are kept.
    assert len(opened) == 1


async def test_sessions_are_closed_and_no_transaction_is_left_open(
    app: FastAPI, client: AsyncClient, database: asyncpg.Connection
) -> None:
    add_test_routes(app)

    for _ in range(5):
        await client.post("/notes", json={"text": "x"})
        await client.get("/notes/999999999")

    assert (await client.get("/test/checked-out")).json() == 0
    assert await idle_in_transaction(database) == 0


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
        # A result is reused for READINESS_CACHE_SECONDS: the next check sees the outage.
        await async_wait_until(
            answers(client, "/health/ready", 503), within=3, message="readiness stayed 200"
        )
        down = await client.get("/health/ready")
        live = await client.get("/health/live")
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()

    assert down.json()["resources"]["postgres"]["status"] == "unavailable"
    assert live.status_code == 200
    await async_wait_until(
        answers(client, "/health/ready", 200), within=3, message="readiness stayed 503"
    )


async def test_an_outage_is_a_503_and_the_service_recovers_without_a_restart(
    stoppable_server: PrivatePostgres,
    make_settings: Callable[..., Settings],
    events: list[EventDict],
) -> None:
    settings = make_settings(database_url=stoppable_server.url)
    async with serve(create_app(settings)) as client:
        note = (await client.post("/notes", json={"text": "before"})).json()
        assert (await client.get(f"/notes/{note['id']}")).status_code == 200

        await asyncio.to_thread(stoppable_server.stop)
        await async_wait_until(
            answers(client, "/health/ready", 503), within=5, message="readiness stayed 200"
        )
        live = await client.get("/health/live")
        read = await client.get(f"/notes/{note['id']}")
        written = await client.post("/notes", json={"text": "during"})

        # Same port, same data, same app: the pool reconnects by itself.
        await asyncio.to_thread(stoppable_server.start)
        after = [
            await client.get(f"/notes/{note['id']}"),
            await client.post("/notes", json={"text": "after"}),
        ]
        await async_wait_until(
            answers(client, "/health/ready", 200), within=3, message="readiness stayed 503"
        )

    assert live.status_code == 200
    assert_answered_unavailable([read, written], events, "postgres")
    assert [response.status_code for response in after] == [200, 201]
    assert after[0].json() == note


async def test_a_query_the_shutdown_cuts_off_is_a_503(
    stoppable_server: PrivatePostgres, make_settings: Callable[..., Settings]
) -> None:
    app = create_app(make_settings(database_url=stoppable_server.url))
    querying = add_signalling_hold(app, seconds=10)

    async with serve(app) as client:
        request = asyncio.create_task(client.get("/test/hold-and-signal"))
        async with asyncio.timeout(5):
            await querying.wait()
        await asyncio.to_thread(stoppable_server.stop)
        async with asyncio.timeout(5):
            response = await request

    assert response.status_code == 503
    assert response.json() == UNAVAILABLE


async def test_a_statement_past_the_command_timeout_ends_on_the_server_too(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    app = add_test_routes(create_app(make_settings(db_command_timeout=0.5)))
    async with serve(app) as client:
        timed_out = await client.get("/test/hold", params={"seconds": 60})
    database = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        # The client dropped its connection at once; the server ends the statement just after,
        # not when its 60 seconds are up.
        await async_wait_until(
            partial(sleeping_sessions_gone, database), within=10, message="pg_sleep runs on"
        )
    finally:
        await database.close()

    assert timed_out.status_code == 503


async def sleeping_sessions_gone(database: asyncpg.Connection) -> bool:
    sleeping = await database.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()"
    )
    return not sleeping


async def test_connections_a_restart_dropped_never_reach_a_request(
    stoppable_server: PrivatePostgres, make_settings: Callable[..., Settings]
) -> None:
    pooled = 4
    settings = make_settings(database_url=stoppable_server.url, db_pool_size=pooled)
    async with serve(add_test_routes(create_app(settings))) as client:
        # Fill the pool: requests that overlap each hold a connection of their own.
        held = await asyncio.gather(*(client.get("/test/hold?seconds=0.2") for _ in range(pooled)))
        assert [response.status_code for response in held] == [200] * pooled
        assert (await client.get("/test/checked-in")).json() == pooled

        # A restart between requests: every pooled connection is now one the server dropped.
        await asyncio.to_thread(stoppable_server.stop)
        await asyncio.to_thread(stoppable_server.start)
        async with counting_new_connections() as opened:
            after = await asyncio.gather(*(client.get("/notes/999999999") for _ in range(pooled)))

    assert [response.status_code for response in after] == [404] * pooled
    # Each dead connection is replaced once, when a request would have got it.
    assert len(opened) == pooled


@asynccontextmanager
async def statements_logged(server: PrivatePostgres) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """With every statement in the server's log: a function returning the log from the moment
    it is called (and then, from the last call)."""
    admin = await asyncpg.connect(asyncpg_dsn(server.url))
    await admin.execute("ALTER DATABASE postgres SET log_statement = 'all'")
    position = await asyncio.to_thread(server.log_position)

    async def since() -> str:
        nonlocal position
        log = await asyncio.to_thread(server.log_since, position)
        position = await asyncio.to_thread(server.log_position)
        return log

    try:
        yield since
    finally:
        await admin.execute("ALTER DATABASE postgres RESET log_statement")
        await admin.close()


def statements(log: str) -> list[str]:
    """The statements of the requests' sessions (not of the outbox relay's, where there is one:
    log_line_prefix names each line's application, see PrivatePostgres)."""
    return re.findall(
        r"^\[{{ cookiecutter.project_slug }}\] LOG:  (?:statement|execute [^:]*): (.*)",
        log,
        re.MULTILINE,
    )


async def test_a_read_sends_the_server_three_statements_and_no_ping(
    private_server: PrivatePostgres, make_settings: Callable[..., Settings]
) -> None:
    # What reaches the server, from its own statement log. pool_pre_ping would add three
    # statements (BEGIN, a ping, ROLLBACK) to every request that checks out a pooled connection.
    settings = make_settings(database_url=private_server.url, db_pool_size=1, db_max_overflow=0)
    async with statements_logged(private_server) as log, serve(create_app(settings)) as client:
        note_id = (await client.post("/notes", json={"text": "x"})).json()["id"]
        await client.get(f"/notes/{note_id}")  # the pooled connection prepares the SELECT
        await log()
        for _ in range(3):
            assert (await client.get(f"/notes/{note_id}")).status_code == 200
        reads = statements(await log())

    assert [statement.split()[0] for statement in reads] == ["BEGIN;", "SELECT", "COMMIT;"] * 3


async def test_a_readiness_check_sends_the_server_three_statements(
    private_server: PrivatePostgres, make_settings: Callable[..., Settings]
) -> None:
    # The check of the schema reads the applied migrations instead of a `SELECT 1`: no round
    # trip more than a bare ping.
    settings = make_settings(
        database_url=private_server.url,
        db_pool_size=1,
        db_max_overflow=0,
        readiness_cache_seconds=0,
    )
    async with statements_logged(private_server) as log, serve(create_app(settings)) as client:
        assert (await client.get("/health/ready")).status_code == 200  # prepares the statement
        await log()
        for _ in range(3):
            assert (await client.get("/health/ready")).status_code == 200
        checks = statements(await log())

    one_check = ["BEGIN;", "SELECT version_num FROM alembic_version", "ROLLBACK;"]
    assert checks == one_check * 3


async def test_a_full_pool_answers_503_rather_than_queueing(
    make_settings: Callable[..., Settings], database: asyncpg.Connection
) -> None:
    pool_timeout, hold_seconds, requests = 0.5, 1.0, 20
    settings = make_settings(db_pool_size=1, db_max_overflow=0, db_pool_timeout=pool_timeout)

    async with serve(add_test_routes(create_app(settings))) as client:

        async def timed_hold() -> tuple[httpx.Response, float]:
            started = time.monotonic()
            response = await client.get(f"/test/hold?seconds={hold_seconds}")
            return response, time.monotonic() - started

        async with asyncio.timeout(pool_timeout + hold_seconds + 5):
            results = await asyncio.gather(*(timed_hold() for _ in range(requests)))
        checked_out = (await client.get("/test/checked-out")).json()

    # The one pooled connection serves one request; the others wait pool_timeout, no longer.
    statuses = sorted(response.status_code for response, _ in results)
    assert statuses == [200] + [503] * (requests - 1)
    for response, seconds in results:
        assert seconds < pool_timeout + hold_seconds + 1
        if response.status_code == 503:
            assert response.json() == UNAVAILABLE
            assert seconds >= pool_timeout
    assert checked_out == 0
    assert await idle_in_transaction(database) == 0


@asynccontextmanager
async def serve_on_a_socket(app: FastAPI) -> AsyncIterator[int]:
    """Serve `app` with uvicorn on a real port, in this event loop; yields the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    serving = asyncio.create_task(server.serve())

    async def started() -> bool:
        if serving.done():
            serving.result()  # raises what stopped it
            pytest.fail("uvicorn stopped before it started")
        return server.started

    try:
        await async_wait_until(started, within=10, message="uvicorn never started")
        yield port
    finally:
        server.should_exit = True
        await serving


async def test_a_request_whose_client_went_away_still_returns_its_connection(
    settings: Settings, database: asyncpg.Connection
) -> None:
    # uvicorn does not cancel a request whose client disconnects: the handler runs to its end
    # (held 60 s here, this test fails), and its answer goes nowhere. What must not happen is
    # that the session then keeps its connection, or leaves its transaction open.
    app = add_test_routes(create_app(settings))
    holding = add_signalling_hold(app, seconds=0.5)

    async with (
        serve_on_a_socket(app) as port,
        AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /test/hold-and-signal HTTP/1.1\r\nHost: test\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            await holding.wait()
        # Gone before the answer, with the request's connection checked out.
        writer.close()
        await writer.wait_closed()

        async def released() -> bool:
            checked_out = (await client.get("/test/checked-out")).json()
            return checked_out == 0 and await idle_in_transaction(database) == 0

        await async_wait_until(released, within=5, message="a connection stayed checked out")


async def test_pool_figures_follow_held_connections_waits_and_timeouts(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(db_pool_size=1, db_max_overflow=0, db_pool_timeout=0.5)
    app = add_test_routes(create_app(settings))
    holding = add_signalling_hold(app, seconds=2.0)
    pool = {"db_client_connection_pool_name": "postgres"}

    async def connections(state: str) -> float:
        scraped = await scrape(client)
        return scraped.value("db_client_connection_count", **pool, db_client_connection_state=state)

    async with serve(app) as client:
        before = await scrape(client)
        held = asyncio.create_task(client.get("/test/hold-and-signal"))
        await asyncio.wait_for(holding.wait(), timeout=5)
        used_while_held, idle_while_held = await connections("used"), await connections("idle")
        # A second request waits for the only connection, then gives up.
        waiting = asyncio.create_task(client.get("/test/hold?seconds=0"))

        async def one_waits() -> bool:
            scraped = await scrape(client)
            return scraped.value("db_client_connection_pending_requests", **pool) == 1

        await async_wait_until(one_waits, within=2, message="no request waited for the pool")
        assert (await waiting).status_code == 503
        assert (await held).status_code == 200
        after = await scrape(client)
        used_after, idle_after = await connections("used"), await connections("idle")

    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert (used_while_held, idle_while_held) == (1, 0)
    assert (used_after, idle_after) == (0, 1)
    assert after.value("db_client_connection_max", **pool) == 1
    assert after.value("db_client_connection_pending_requests", **pool) == 0
    assert grew("db_client_connection_timeouts_total", **pool) == 1
    assert grew("resource_unavailable_total", resource="postgres") == 1
    # The timed-out wait took the pool timeout; the held request's wait took next to nothing.
    assert grew("db_client_connection_wait_time_seconds_bucket", **pool, le="0.25") >= 1
    assert grew("db_client_connection_wait_time_seconds_bucket", **pool, le="+Inf") >= 2
    assert grew("db_client_connection_wait_time_seconds_sum", **pool) >= 0.5


def pool_waiters() -> float:
    """Requests waiting for a pooled connection, as the metric counts them."""
    (family,) = DB_POOL_PENDING.collect()
    labels = dict.fromkeys(POOL_LABELS, "postgres")
    (waiting,) = [sample.value for sample in family.samples if sample.labels == labels]
    return waiting


@asynccontextmanager
async def open_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    deadline = asyncio.get_running_loop().time() + settings.startup_timeout
    async with open_postgres(settings, deadline) as engine:
        yield engine


def start_using(engine: AsyncEngine, served: list[str], name: str) -> asyncio.Task[None]:
    """A task that checks out a connection, notes `name` in `served`, and gives it back."""

    async def use() -> None:
        async with engine.connect():
            served.append(name)

    return asyncio.create_task(use(), name=name)


async def line_up(engine: AsyncEngine, served: list[str], name: str) -> asyncio.Task[None]:
    """`start_using`, returning once the task waits for the pool."""
    waiting = pool_waiters()
    task = start_using(engine, served, name)

    async def in_line() -> bool:
        return pool_waiters() == waiting + 1

    await async_wait_until(in_line, within=5, message=f"{name} never waited for the pool")
    return task


async def test_connections_go_to_requests_in_the_order_they_waited(
    make_settings: Callable[..., Settings],
) -> None:
    served: list[str] = []
    async with open_engine(make_settings(db_pool_size=1, db_max_overflow=0)) as engine:
        holder = await engine.connect()
        waiters = [await line_up(engine, served, f"waiter {n}") for n in range(3)]
        # Asks as the connection comes back, before the waiter that wakes has run: SQLAlchemy's
        # own asyncio queue gave it the connection and sent that waiter to the end of the line.
        newcomer = start_using(engine, served, "newcomer")
        await holder.close()
        async with asyncio.timeout(10):
            await asyncio.gather(*waiters, newcomer)
    assert served == ["waiter 0", "waiter 1", "waiter 2", "newcomer"]


async def test_a_connection_handed_to_a_cancelled_request_goes_to_the_next(
    make_settings: Callable[..., Settings],
) -> None:
    pool_timeout = 5.0
    settings = make_settings(db_pool_size=1, db_max_overflow=0, db_pool_timeout=pool_timeout)
    served: list[str] = []
    async with open_engine(settings) as engine:
        holder = await engine.connect()
        first = await line_up(engine, served, "first")
        second = await line_up(engine, served, "second")
        await holder.close()  # hands the connection to the first in line...
        first.cancel()  # ...cancelled (a client gone, a deadline) before it could run
        # Well before the second's pool timeout: it does not wait for a connection now lost.
        async with asyncio.timeout(pool_timeout / 2):
            await second
        with pytest.raises(asyncio.CancelledError):
            await first
        checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    assert served == ["second"]
    assert checked_out == 0


def handed_on_while_full(queue: FirstComeQueue) -> Callable[[], None]:
    """Gives back "handed" (to the first waiter) and then "other" (among the idle ones, which
    fills a queue of one)."""

    def give_back() -> None:
        queue.put_nowait(cast(ConnectionPoolEntry, "handed"))
        queue.put_nowait(cast(ConnectionPoolEntry, "other"))

    return give_back


async def waiting_in(queue: FirstComeQueue, seconds: float | None) -> asyncio.Task[Any]:
    task = asyncio.create_task(queue._wait(seconds))

    async def waits() -> bool:
        return len(queue._waiters) == 1

    await async_wait_until(waits, within=5, message="the task never waited")
    return task


async def test_a_connection_handed_to_a_cancelled_waiter_fits_a_full_queue() -> None:
    queue = FirstComeQueue(maxsize=1)
    waiter = await waiting_in(queue, seconds=None)
    handed_on_while_full(queue)()
    waiter.cancel()

    with pytest.raises(asyncio.CancelledError):  # its own exception, not Full
        await waiter
    assert sorted(cast(list[str], queue._idle)) == ["handed", "other"]


async def test_a_connection_handed_to_a_timed_out_waiter_fits_a_full_queue() -> None:
    queue = FirstComeQueue(maxsize=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiter = asyncio.create_task(queue._wait(0.05))
    await asyncio.sleep(0)  # its first step: it waits, its timeout due 0.05 s from now or later
    assert len(queue._waiters) == 1
    # Due before that timeout, whenever the waiter's step ran. The event loop is then held
    # past both (a busy loop, not a wait for anything), so that they fall due in one turn and
    # run in the order they are due: the connection handed over, then the wait timed out,
    # before the waiter runs again.
    loop.call_at(started + 0.01, handed_on_while_full(queue))
    held_until = loop.time() + 0.1
    while loop.time() < held_until:
        pass

    with pytest.raises(Empty):  # SQLAlchemy's pool timeout, not Full
        await waiter
    assert sorted(cast(list[str], queue._idle)) == ["handed", "other"]


async def test_a_readiness_timeout_storm_on_a_full_pool_loses_no_connection(
    make_settings: Callable[..., Settings],
) -> None:
    # Readiness checks that time out waiting for a connection as held ones come back: each
    # connection must end up idle again, none lost, none counted twice.
    settings = make_settings(
        db_pool_size=1,
        db_max_overflow=1,
        db_pool_timeout=5,
        readiness_timeout=0.05,
        readiness_cache_seconds=0,
    )
    async with serve(add_test_routes(create_app(settings))) as client:
        holds = [
            asyncio.create_task(client.get(f"/test/hold?seconds={seconds}"))
            for seconds in (0.5, 0.7)
        ]
        probes = []
        for _ in range(40):
            probes.append(asyncio.create_task(client.get("/health/ready")))
            await asyncio.sleep(0.025)  # the probes' pace, spread over the holds' end
        async with asyncio.timeout(10):
            await asyncio.gather(*holds, *probes)

        async def all_checked_in() -> bool:
            checked_out: int = (await client.get("/test/checked-out")).json()
            return checked_out == 0

        # A probe answers "timeout" without waiting for its check's cleanup: a check cancelled
        # in its query gives the connection back a moment later. A lost one never comes back.
        await async_wait_until(all_checked_in, within=5, message="a connection stayed checked out")
        both_at_once = await asyncio.gather(
            *(client.get("/test/hold?seconds=0.3") for _ in range(2))
        )

    assert [response.status_code for response in both_at_once] == [200, 200]
