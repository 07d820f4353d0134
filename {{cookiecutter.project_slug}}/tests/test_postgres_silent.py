"""PostgreSQL that stops answering without closing anything (a network partition, a frozen VM, a
dropped conntrack entry): deadlines bound every request and probe, a silent connection is never
reused, the rest of the service answers as usual, and it recovers when the network heals."""

import asyncio
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.dependencies import DbSession
from {{ cookiecutter.package_name }}.models import Note
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import (
    LIFESPAN_RESOURCES,
    assert_answered_unavailable,
    auth_headers,
    migrate,
    serve,
)
from tests.processes import (
    closing_events,
    finish,
    json_lines,
    running,
    stopped_while_silent,
    traceback_frames,
    url,
    wait_until_ready,
    worst_case_stop_seconds,
)
from tests.servers import (
    TcpProxy,
    answers,
    async_wait_until,
    private_postgres,
    tcp_proxy,
    timed,
    wait_until,
)

CONNECT_TIMEOUT, COMMAND_TIMEOUT, READINESS_TIMEOUT = 0.5, 1.0, 0.3
# Scheduling and a loaded CI machine; smaller than the gap between the two timeouts above, so
# that a request bounded by one cannot pass for the other (asyncpg's cancel requests open
# connections of their own, so counting connections at the proxy would not tell them apart).
SLACK = 0.4
# A process's own start of shutdown and exit, on a loaded CI machine.
PROCESS_SLACK = 2.0


@pytest.fixture
def proxy(database_url: str) -> Iterator[TcpProxy]:
    url = make_url(database_url)
    with tcp_proxy(url.port or 5432, url.host or "127.0.0.1") as proxy:
        yield proxy


@pytest.fixture
def settings_through_proxy(
    proxy: TcpProxy, database_url: str, make_settings: Callable[..., Settings]
) -> Settings:
    url = make_url(database_url).set(host="127.0.0.1", port=proxy.port)
    return make_settings(
        database_url=url.render_as_string(hide_password=False),
        db_pool_size=1,
        db_max_overflow=0,
        db_connect_timeout=CONNECT_TIMEOUT,
        db_command_timeout=COMMAND_TIMEOUT,
        readiness_timeout=READINESS_TIMEOUT,
        readiness_cache_seconds=0,
    )


async def test_a_silent_database_costs_each_request_one_deadline_and_heals_by_itself(
    proxy: TcpProxy, settings_through_proxy: Settings, events: list[EventDict]
) -> None:
    async with serve(create_app(settings_through_proxy)) as client:
        note = (await client.post("/notes", json={"text": "before"})).json()
        read_note = f"/notes/{note['id']}"

        async def heal() -> float:
            await asyncio.to_thread(proxy.heal)
            return await async_wait_until(
                answers(client, read_note, 200), within=5, message="reads never recovered"
            )

        await asyncio.to_thread(proxy.go_silent)
        # The readiness check takes the one pooled connection and hangs on it: the probe still
        # answers at READINESS_TIMEOUT, whatever cancelling the check has to clean up.
        ready, ready_seconds = await timed(client.get("/health/ready"))
        # That connection was discarded: a read opens a new one, which the silent server never
        # answers, and DB_CONNECT_TIMEOUT bounds it.
        connecting, connecting_seconds = await timed(client.get(read_note))
        first_recovery = await heal()

        await asyncio.to_thread(proxy.go_silent)
        # A pooled connection goes silent mid-statement: DB_COMMAND_TIMEOUT bounds the read...
        reading = asyncio.create_task(timed(client.get(read_note)))
        # ...while what needs no database answers at once.
        live, live_seconds = await timed(client.get("/health/live"))
        (querying, querying_seconds) = await reading
        # ...and that connection is not reused: the next read opens a new one, bounded by
        # DB_CONNECT_TIMEOUT (reusing the old one would take DB_COMMAND_TIMEOUT again).
        reconnecting, reconnecting_seconds = await timed(client.get(read_note))
        second_recovery = await heal()
        await async_wait_until(
            answers(client, "/health/ready", 200), within=5, message="readiness stayed 503"
        )

    assert ready.status_code == 503
    assert ready.json()["resources"]["postgres"]["error"] == "timeout"
    assert ready_seconds < READINESS_TIMEOUT + SLACK
    assert_answered_unavailable([connecting, querying, reconnecting], events, "postgres")
    assert CONNECT_TIMEOUT <= connecting_seconds < CONNECT_TIMEOUT + SLACK
    assert COMMAND_TIMEOUT <= querying_seconds < COMMAND_TIMEOUT + SLACK
    assert CONNECT_TIMEOUT <= reconnecting_seconds < CONNECT_TIMEOUT + SLACK
    assert (live.status_code, live_seconds < 0.25) == (200, True)
    assert max(first_recovery, second_recovery) < 2


async def test_a_commit_the_silence_cuts_off_is_a_503_within_the_command_timeout(
    proxy: TcpProxy, settings_through_proxy: Settings, events: list[EventDict]
) -> None:
    app = create_app(settings_through_proxy)
    written, go_on = asyncio.Event(), asyncio.Event()

    @app.post("/test/write-then-wait")
    async def write_then_wait(session: DbSession) -> None:
        session.add(Note(text="cut off"))
        await session.flush()
        written.set()
        await go_on.wait()

    async with serve(app) as client:
        request = asyncio.create_task(timed(client.post("/test/write-then-wait")))
        async with asyncio.timeout(5):
            await written.wait()
        await asyncio.to_thread(proxy.go_silent)
        go_on.set()  # the handler returns, and its session commits into the silence
        response, seconds = await request
        await asyncio.to_thread(proxy.heal)

    # Whether the server got the COMMIT is unknown to the client (it may yet arrive when the
    # network heals): a 503 that a client may retry, not a 500, and on time.
    assert_answered_unavailable([response], events, "postgres")
    assert COMMAND_TIMEOUT <= seconds < COMMAND_TIMEOUT + SLACK


def test_sigterm_with_the_database_silent_exits_0_within_the_bound(
    proxy: TcpProxy, settings_through_proxy: Settings, service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env |= {
        "DATABASE_URL": settings_through_proxy.database_url.get_secret_value(),
        "GRACEFUL_SHUTDOWN_TIMEOUT": "1",
        "SHUTDOWN_TIMEOUT": "1",
    }

    seconds, log = stopped_while_silent(service_env, tmp_path, proxy)

    assert seconds < worst_case_stop_seconds(service_env, len(LIFESPAN_RESOURCES)) + PROCESS_SLACK
    # Closing the pooled connection waits on the silent server until SHUTDOWN_TIMEOUT; the
    # other resources close all the same.
    assert closing_events(log) == dict.fromkeys(LIFESPAN_RESOURCES, "resource.closed") | {
        "postgres": "resource.close_failed"
    }


def test_requests_cut_off_inside_connect_log_no_password(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    password = "s3cret-in-connect"
    with private_postgres(password=password) as server, tcp_proxy(server.port) as proxy:
        migrate(server.url)
        service_env |= {
            "DATABASE_URL": make_url(server.url)
            .set(port=proxy.port)
            .render_as_string(hide_password=False),
            # Requests that outlast the graceful shutdown inside the driver's connect, where
            # SQLAlchemy's and asyncpg's frames hold the password.
            "DB_POOL_SIZE": "1",
            "DB_MAX_OVERFLOW": "3",
            "DB_CONNECT_TIMEOUT": "30",
            "DB_COMMAND_TIMEOUT": "30",
            "GRACEFUL_SHUTDOWN_TIMEOUT": "1",
            "SHUTDOWN_TIMEOUT": "1",
        }
        with running("python -m", service_env, tmp_path) as service, ThreadPoolExecutor(4) as pool:
            wait_until_ready(service, service_env["PORT"])
            proxy.go_silent()
            connecting = proxy.connections + 3
            for _ in range(4):  # one on the pooled connection, three opening new ones
                pool.submit(
                    httpx.get, url(service_env, "/notes/1"), headers=auth_headers(), timeout=30
                )
            wait_until(
                lambda: proxy.connections >= connecting,
                timeout=10,
                message="the requests never started to connect",
            )
            service.process.send_signal(signal.SIGTERM)
            returncode, stdout, stderr = finish(service)

    assert returncode == 0, stderr
    cut_off = [line for line in json_lines(stdout) if "exception" in line]
    # The tracebacks are there, down into the driver's connect...
    assert any(
        "asyncpg" in frame["filename"] and "connect" in frame["name"]
        for line in cut_off
        for frame in traceback_frames(line)
    ), cut_off
    # ...and carry no password.
    assert password not in stdout + stderr
