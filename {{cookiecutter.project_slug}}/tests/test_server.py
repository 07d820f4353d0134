{%- set verified = cookiecutter.use_postgres or cookiecutter.use_redis -%}
"""The service as a process: both ways of starting it, JSON logs, SIGTERM, startup failures."""

{% if cookiecutter.use_postgres -%}
import asyncio
{% endif -%}
import re
import signal
import time
import uuid
{% if cookiecutter.use_postgres -%}
from collections.abc import Iterator
{% endif -%}
from concurrent.futures import ThreadPoolExecutor
{%- if cookiecutter.use_postgres %}
from contextlib import ExitStack, contextmanager
{%- elif verified %}
from contextlib import ExitStack
{%- endif %}
from pathlib import Path
from typing import Any

{% if cookiecutter.use_postgres -%}
import asyncpg
{% endif -%}
import httpx
import pytest
{%- if cookiecutter.use_postgres %}
from sqlalchemy.engine import make_url
{%- endif %}

{% if cookiecutter.use_postgres -%}
from tests.conftest import (
    LIFESPAN_RESOURCES,
    admin_execute,
    asyncpg_dsn,
    auth_headers,
    migrate,
)
{%- elif cookiecutter.use_http_client -%}
from tests.conftest import LIFESPAN_RESOURCES, auth_headers
{%- else -%}
from tests.conftest import LIFESPAN_RESOURCES
{%- endif %}
from tests.processes import (
    COMMANDS,
    Service,
    finish,
    json_lines,
    running,
    traceback_frames,
    url,
    wait_until_ready,
)
{%- set server_helpers = (["free_port"] if verified else [])
    + (["private_postgres"] if cookiecutter.use_postgres else [])
    + (["private_redis"] if cookiecutter.use_redis else [])
    + ["wait_until"] %}
from tests.servers import {{ server_helpers | join(", ") }}


@pytest.mark.parametrize("how", list(COMMANDS))
def test_serves_logs_json_and_stops_cleanly_on_sigterm(
    how: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env["PROBE_LOG_LEVEL"] = "INFO"  # for the request line of /health/live
    with running(how, service_env, tmp_path) as service:
        wait_until_ready(service, service_env["PORT"])
        response = httpx.get(
            f"http://127.0.0.1:{service_env['PORT']}/health/live",
            headers={"X-Request-ID": "from-the-test"},
        )
{%- if cookiecutter.use_http_client %}
        upstream = httpx.get(url(service_env, "/upstream/echo/call"), headers=auth_headers())
{%- endif %}
        service.process.send_signal(signal.SIGTERM)
        returncode, stdout, stderr = finish(service)

    assert response.status_code == 200
    # uvicorn's own CLI re-raises SIGTERM after its graceful shutdown; `python -m` exits 0.
    assert returncode == (0 if how == "python -m" else -signal.SIGTERM), stderr
    lines = json_lines(stdout)
    assert any(line["event"].startswith("Started server process") for line in lines)
    opened = [line["resource"] for line in lines if line["event"] == "resource.opened"]
    closed = [line["resource"] for line in lines if line["event"] == "resource.closed"]
    assert (opened, closed) == (LIFESPAN_RESOURCES, LIFESPAN_RESOURCES[::-1])
    # Only the service's own events and uvicorn's lines at INFO: no library chatter.
    loggers = {line["logger"] for line in lines if "logger" in line}
    assert loggers <= {"uvicorn.error"}, loggers
    requests = [line for line in lines if line["event"] == "http.request"]
    [live] = [line for line in requests if line["path"] == "/health/live"]
    assert {"status": 200, "request_id": "from-the-test"}.items() <= live.items()
{%- if cookiecutter.use_http_client %}
    # The outgoing call: our line, httpx's own (with the query string) not at all.
    assert upstream.status_code == 200
    calls = [line for line in lines if line["event"] == "http_client.response"]
    [call] = [line for line in calls if line["path"] == "/echo/call"]
    assert call["status"] == 200
    assert call["request_id"] == requests[-1]["request_id"]
{%- endif %}


@pytest.mark.parametrize(
    ("workers", "forwarded_allow_ips", "logged_client"),
    [
        ("1", "127.0.0.1", "203.0.113.7"),  # the test is the trusted proxy: its word is taken
        ("1", "10.0.0.0/8", "127.0.0.1"),  # an untrusted peer's header is ignored
        ("2", "127.0.0.1", "203.0.113.7"),  # each worker is told too
    ],
)
def test_the_request_log_names_the_client_a_trusted_proxy_forwards(
    service_env: dict[str, str],
    tmp_path: Path,
    workers: str,
    forwarded_allow_ips: str,
    logged_client: str,
) -> None:
    service_env |= {
        "WORKERS": workers,
        "FORWARDED_ALLOW_IPS": forwarded_allow_ips,
        "PROBE_LOG_LEVEL": "INFO",
    }
    request_id = f"forwarded-{uuid.uuid4().hex}"
    with running("python -m", service_env, tmp_path) as service:
        wait_until_ready(service, service_env["PORT"])
        httpx.get(
            url(service_env, "/health/live"),
            headers={"X-Forwarded-For": "203.0.113.7", "X-Request-ID": request_id},
        )

        def logged() -> list[dict[str, Any]]:
            return [
                line
                for line in service.log()
                if line["event"] == "http.request" and line.get("request_id") == request_id
            ]

        wait_until(lambda: bool(logged()), timeout=10, message="the request was not logged")

    assert [line["client"] for line in logged()] == [logged_client]


@pytest.mark.parametrize("probe_log_level", [None, "INFO"], ids=["default", "PROBE_LOG_LEVEL=INFO"])
def test_at_log_level_info_health_probes_are_logged_only_when_asked(
    probe_log_level: str | None, service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env["LOG_LEVEL"] = "INFO"
    if probe_log_level is not None:
        service_env["PROBE_LOG_LEVEL"] = probe_log_level
    with running("python -m", service_env, tmp_path) as service:
        wait_until_ready(service, service_env["PORT"])
        live = httpx.get(url(service_env, "/health/live"))
        not_found = httpx.get(url(service_env, "/not-a-probe"))
        service.process.send_signal(signal.SIGTERM)
        returncode, stdout, stderr = finish(service)

    assert (live.status_code, not_found.status_code, returncode) == (200, 404, 0), stderr
    logged = [line["path"] for line in json_lines(stdout) if line["event"] == "http.request"]
    if probe_log_level is None:
        assert logged == ["/not-a-probe"]
    else:
        assert logged[-2:] == ["/health/live", "/not-a-probe"]


@pytest.mark.parametrize("how", list(COMMANDS))
def test_a_bad_setting_stops_startup_with_one_line(
    how: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env["LOG_FORMAT"] = "xml"
    with running(how, service_env, tmp_path) as service:
        returncode, _, stderr = finish(service)

    assert returncode != 0
    assert stderr.strip().splitlines()[-1].startswith("invalid settings: LOG_FORMAT: ")
{%- if verified %}


@pytest.mark.parametrize("how", list(COMMANDS))
def test_an_unreachable_resource_stops_startup_with_a_nonzero_exit(
    how: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env["STARTUP_TIMEOUT"] = "1"
{%- if cookiecutter.use_postgres %}
    service_env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
{%- else %}
    service_env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
{%- endif %}
    with running(how, service_env, tmp_path) as service:
        returncode, stdout, stderr = finish(service)

    assert returncode != 0, stderr
    lines = json_lines(stdout)
    assert any(line["event"] == "resource.open_failed" for line in lines)
    assert any("ResourceUnavailableError" in line["event"] for line in lines)


{%- if cookiecutter.use_postgres %}


@contextmanager
def role_with_password(database_url: str, password: str) -> Iterator[str]:
    """`database_url` as a role of its own that logs in with `password`: on a server that
    checks passwords (CI's PostgreSQL container) as well as on one that trusts local clients."""
    role = f"test_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin_execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"))
    # All the service reads to be ready: the migrations applied (see DB_SCHEMA_CHECK).
    grant = f'GRANT SELECT ON alembic_version TO "{role}"'
    asyncio.run(admin_execute(grant, database_url))
    try:
        url = make_url(database_url).set(username=role, password=password)
        yield url.render_as_string(hide_password=False)
    finally:
        revoke = f'REVOKE ALL ON alembic_version FROM "{role}"'
        asyncio.run(admin_execute(revoke, database_url))
        asyncio.run(admin_execute(f'DROP ROLE "{role}"'))
{%- endif %}


def test_no_password_reaches_the_output(service_env: dict[str, str], tmp_path: Path) -> None:
    outputs = []
    with ExitStack() as servers:
{%- if cookiecutter.use_postgres %}
        service_env["DATABASE_URL"] = servers.enter_context(
            role_with_password(service_env["DATABASE_URL"], "s3cret-pg")
        )
{%- endif %}
{%- if cookiecutter.use_redis %}
        redis_server = servers.enter_context(private_redis(password="s3cret-redis"))
        for password in ("s3cret-redis", "s3cret-wrong"):
            service_env["REDIS_URL"] = f"redis://:{password}@127.0.0.1:{redis_server.port}/0"
            service_env["STARTUP_TIMEOUT"] = "1"
            with running("python -m", service_env, tmp_path) as service:
                if password == "s3cret-redis":
                    wait_until_ready(service, service_env["PORT"])
                    service.process.send_signal(signal.SIGTERM)
                outputs.append(finish(service))
    assert [returncode == 0 for returncode, _, _ in outputs] == [True, False]
{%- else %}
        with running("python -m", service_env, tmp_path) as service:
            wait_until_ready(service, service_env["PORT"])
            service.process.send_signal(signal.SIGTERM)
            outputs.append(finish(service))
    assert outputs[0][0] == 0
{%- endif %}

    for _, stdout, stderr in outputs:
        assert "s3cret" not in stdout + stderr
{%- endif %}


def events_of(lines: list[dict[str, Any]]) -> list[str]:
    return [line["event"] for line in lines]


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_an_unhandled_error_logs_its_traceback_without_the_request_headers(
    log_format: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env["LOG_FORMAT"] = log_format
    secrets = {"Authorization": "Bearer s3cret-token", "Cookie": "session=s3cret-cookie"}
    with running("slow app", service_env, tmp_path) as service:
        wait_until_ready(service, service_env["PORT"])
        response = httpx.get(url(service_env, "/test/fail"), headers=secrets)
        service.process.send_signal(signal.SIGTERM)
        returncode, stdout, stderr = finish(service)

    assert response.status_code == 500
    assert returncode == 0, stderr
    # The traceback is there, down to the failing route; the request's headers are not.
    if log_format == "json":
        [error] = [line for line in json_lines(stdout) if line["event"] == "http.unhandled_error"]
        assert "fail" in [frame["name"] for frame in traceback_frames(error)]
    else:
        # Rich's traceback, if rich is installed, is coloured even when stdout is no terminal.
        text = re.sub(r"\x1b\[[0-9;]*m", "", stdout)
        assert "RuntimeError: a bug in a route" in text
        # Rich folds long lines into its box: read the frame's line without the box.
        assert re.search(r"tests/slow_app\.py:\d+infail", re.sub(r"[\s│]", "", text))
    assert "s3cret" not in stdout + stderr
{%- if cookiecutter.use_postgres %}


async def change_password_and_disconnect(server_url: str, password: str) -> None:
    """Give the server's postgres role a new password and end every other session: the
    service's next connection logs in with the password that is now wrong."""
    admin = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await admin.execute(f"ALTER ROLE postgres PASSWORD '{password}'")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()


def test_a_wrong_database_password_is_a_500_whose_traceback_has_no_password(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    # A server that checks passwords, started with the service's password, changed under it.
    with private_postgres(password="s3cret-before") as server:
        migrate(server.url)
        service_env["DATABASE_URL"] = server.url
        with running("python -m", service_env, tmp_path) as service:
            wait_until_ready(service, service_env["PORT"])
            asyncio.run(change_password_and_disconnect(server.url, "s3cret-after"))
            # 28P01 (invalid password) is no outage: a 500, with a traceback.
            wait_until(
                lambda: (
                    httpx.get(url(service_env, "/notes/1"), headers=auth_headers()).status_code
                    == 500
                ),
                timeout=10,
                message="no request failed on the wrong password",
            )
            service.process.send_signal(signal.SIGTERM)
            returncode, stdout, stderr = finish(service)

    assert returncode == 0, stderr
    errors = [line for line in json_lines(stdout) if line["event"] == "http.unhandled_error"]
    assert errors
    # The traceback goes down into asyncpg's connect, whose frames hold the password.
    frames = traceback_frames(errors[0])
    assert any("asyncpg" in frame["filename"] and "connect" in frame["name"] for frame in frames)
    assert "InvalidPasswordError" in {exception["exc_type"] for exception in errors[0]["exception"]}
    assert "s3cret" not in stdout + stderr
{%- endif %}


def test_sigterm_drains_the_requests_in_flight(service_env: dict[str, str], tmp_path: Path) -> None:
    service_env |= {"DRAIN_SECONDS": "2", "GRACEFUL_SHUTDOWN_TIMEOUT": "5"}
    readiness: list[httpx.Response] = []

    def draining() -> bool:
        readiness.append(httpx.get(url(service_env, "/health/ready")))
        return readiness[-1].status_code == 503

    with running("slow app", service_env, tmp_path) as service, ThreadPoolExecutor(3) as pool:
        wait_until_ready(service, service_env["PORT"])
        slow = [
            pool.submit(httpx.get, url(service_env, "/test/slow?seconds=2.5"), timeout=15)
            for _ in range(3)
        ]
        wait_until(
            lambda: httpx.get(url(service_env, "/test/in-flight")).json() == 3,
            timeout=10,
            message="the slow requests never started",
        )
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        wait_until(draining, timeout=5, message="readiness never turned 503")
        live_while_draining = httpx.get(url(service_env, "/health/live"))
        answers = [future.result() for future in slow]
        returncode, stdout, stderr = finish(service)
        stopped_after = time.monotonic() - signalled

    assert readiness[-1].json() == {"status": "draining", "resources": {}}
    assert live_while_draining.status_code == 200
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert returncode == 0, stderr
    assert stopped_after < 2 + 5
    # Resources close only after the last request has been answered.
    lines = json_lines(stdout)
    events = events_of(lines)
    last_slow_request = max(
        index
        for index, line in enumerate(lines)
        if line.get("path") == "/test/slow" and line["event"] == "http.request"
    )
    assert events.index("shutdown.draining") < last_slow_request < events.index("lifespan.stopping")
    closed = [line["resource"] for line in lines if line["event"] == "resource.closed"]
    assert closed == LIFESPAN_RESOURCES[::-1]


def test_a_stream_left_open_is_cut_at_the_graceful_shutdown_timeout(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env["GRACEFUL_SHUTDOWN_TIMEOUT"] = "1"
    with (
        running("slow app", service_env, tmp_path) as service,
        httpx.Client(timeout=15) as client,
    ):
        wait_until_ready(service, service_env["PORT"])
        with client.stream("GET", url(service_env, "/test/stream")) as stream:
            # Held until the end: dropping the iterator would close the stream from our side.
            ticks = stream.iter_lines()
            assert next(ticks) == "tick"
            signalled = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            returncode, stdout, stderr = finish(service)
            stopped_after = time.monotonic() - signalled

    assert returncode == 0, stderr
    # It waited for the stream as long as GRACEFUL_SHUTDOWN_TIMEOUT allows, and not much longer.
    assert 1 <= stopped_after < 1 + 3
    lines = json_lines(stdout)
    assert "lifespan.stopped" in events_of(lines)
    closed = [line["resource"] for line in lines if line["event"] == "resource.closed"]
    assert closed == LIFESPAN_RESOURCES[::-1]


def test_each_worker_runs_a_lifespan_of_its_own(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env["WORKERS"] = "2"

    def started_workers(service: Service) -> set[int]:
        return {line["pid"] for line in service.log() if line["event"] == "lifespan.started"}

    with running("python -m", service_env, tmp_path) as service:
        wait_until(
            lambda: len(started_workers(service)) == 2,
            timeout=30,
            message="two workers never started",
        )
        assert httpx.get(url(service_env, "/health/ready")).status_code == 200
        service.process.send_signal(signal.SIGTERM)
        returncode, stdout, stderr = finish(service)

    assert returncode == 0, stderr
    lines = json_lines(stdout)
    workers = {line["pid"] for line in lines if line["event"] == "lifespan.started"}
    assert len(workers) == 2
    assert service.process.pid not in workers  # nothing opened in the parent, before the fork
    opened = [line["resource"] for line in lines if line["event"] == "resource.opened"]
    closed = [line["resource"] for line in lines if line["event"] == "resource.closed"]
    assert sorted(opened) == sorted(closed) == sorted(LIFESPAN_RESOURCES * 2)
    assert events_of(lines).count("lifespan.stopped") == 2
{%- if verified %}


def test_a_worker_that_cannot_start_stops_the_whole_process(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env |= {"WORKERS": "2", "STARTUP_TIMEOUT": "1"}
{%- if cookiecutter.use_postgres %}
    service_env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
{%- else %}
    service_env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
{%- endif %}
    with running("python -m", service_env, tmp_path) as service:
        returncode, stdout, _ = finish(service)

    # Exits on its own with uvicorn's startup-failure status: no loop of restarted workers.
    assert returncode == 3
    events = events_of(json_lines(stdout))
    assert events.count("resource.open_failed") >= 1
    assert "lifespan.started" not in events
{%- endif %}
