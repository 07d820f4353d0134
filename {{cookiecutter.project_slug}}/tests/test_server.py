{%- set verified = cookiecutter.use_postgres or cookiecutter.use_redis -%}
"""The service as a process: both ways of starting it, JSON logs, SIGTERM, startup failures."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
{%- if cookiecutter.use_postgres %}
from sqlalchemy.engine import make_url
{%- endif %}

{% if cookiecutter.use_redis -%}
from tests.conftest import REDIS_URL, RESOURCES
from tests.servers import free_port, private_redis, wait_until
{%- else -%}
from tests.conftest import RESOURCES
from tests.servers import free_port, wait_until
{%- endif %}

PACKAGE = "{{ cookiecutter.package_name }}"
COMMANDS = {
    "python -m": [sys.executable, "-m", PACKAGE],
    "uvicorn": [sys.executable, "-m", "uvicorn", f"{PACKAGE}.main:app"],
}


@pytest.fixture
def service_env(
    tmp_path: Path,
{%- if cookiecutter.use_postgres %}
    database_url: str,
{%- endif %}
{%- if cookiecutter.use_http_client %}
    upstream_url: str,
{%- endif %}
) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PORT": str(free_port()),
        "LOG_FORMAT": "json",
        "STARTUP_TIMEOUT": "10",
{%- if cookiecutter.use_postgres %}
        "DATABASE_URL": database_url,
{%- endif %}
{%- if cookiecutter.use_redis %}
        "REDIS_URL": REDIS_URL,
{%- endif %}
{%- if cookiecutter.use_http_client %}
        "HTTP_CLIENT_BASE_URL": upstream_url,
{%- endif %}
    }


@contextmanager
def running(how: str, env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    # uvicorn's CLI takes the port as an option; `python -m` reads PORT from the settings.
    port_option = ["--port", env["PORT"]] if how == "uvicorn" else []
    process = subprocess.Popen(
        [*COMMANDS[how], *port_option],
        env=env,
        cwd=cwd,  # no .env file in reach
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_until_ready(process: subprocess.Popen[str], port: str) -> None:
    def ready() -> bool:
        assert process.poll() is None, "the service exited during startup"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, timeout=30, message="the service never became ready")


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=30)
    return process.returncode, stdout, stderr


def json_lines(stdout: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stdout.splitlines()]
    for line in lines:
        assert {"event", "level", "timestamp"} <= set(line), line
    return lines


@pytest.mark.parametrize("how", list(COMMANDS))
def test_serves_logs_json_and_stops_cleanly_on_sigterm(
    how: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    with running(how, service_env, tmp_path) as process:
        wait_until_ready(process, service_env["PORT"])
        response = httpx.get(
            f"http://127.0.0.1:{service_env['PORT']}/health/live",
            headers={"X-Request-ID": "from-the-test"},
        )
        process.send_signal(signal.SIGTERM)
        returncode, stdout, stderr = finish(process)

    assert response.status_code == 200
    # uvicorn's own CLI re-raises SIGTERM after its graceful shutdown; `python -m` exits 0.
    assert returncode == (0 if how == "python -m" else -signal.SIGTERM), stderr
    lines = json_lines(stdout)
    assert any(line["event"].startswith("Started server process") for line in lines)
    opened = [line["resource"] for line in lines if line["event"] == "resource.opened"]
    closed = [line["resource"] for line in lines if line["event"] == "resource.closed"]
    assert (opened, closed) == (RESOURCES, RESOURCES[::-1])
    requests = [line for line in lines if line["event"] == "http.request"]
    assert {"path": "/health/live", "status": 200, "request_id": "from-the-test"}.items() <= (
        requests[-1].items()
    )


@pytest.mark.parametrize("how", list(COMMANDS))
def test_a_bad_setting_stops_startup_with_one_line(
    how: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env["LOG_FORMAT"] = "xml"
    with running(how, service_env, tmp_path) as process:
        returncode, _, stderr = finish(process)

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
    with running(how, service_env, tmp_path) as process:
        returncode, stdout, stderr = finish(process)

    assert returncode != 0, stderr
    lines = json_lines(stdout)
    assert any(line["event"] == "resource.open_failed" for line in lines)
    assert any("ResourceUnavailableError" in line["event"] for line in lines)


def test_no_password_reaches_the_output(service_env: dict[str, str], tmp_path: Path) -> None:
{%- if cookiecutter.use_postgres %}
    # Trust authentication ignores the password, so the service starts with it.
    service_env["DATABASE_URL"] = (
        make_url(service_env["DATABASE_URL"])
        .set(password="s3cret-pg")
        .render_as_string(hide_password=False)
    )
{%- endif %}
    outputs = []
{%- if cookiecutter.use_redis %}
    with private_redis(password="s3cret-redis") as redis_server:
        for password in ("s3cret-redis", "s3cret-wrong"):
            service_env["REDIS_URL"] = f"redis://:{password}@127.0.0.1:{redis_server.port}/0"
            service_env["STARTUP_TIMEOUT"] = "1"
            with running("python -m", service_env, tmp_path) as process:
                if password == "s3cret-redis":
                    wait_until_ready(process, service_env["PORT"])
                    process.send_signal(signal.SIGTERM)
                outputs.append(finish(process))
    assert [returncode == 0 for returncode, _, _ in outputs] == [True, False]
{%- else %}
    with running("python -m", service_env, tmp_path) as process:
        wait_until_ready(process, service_env["PORT"])
        process.send_signal(signal.SIGTERM)
        outputs.append(finish(process))
    assert outputs[0][0] == 0
{%- endif %}

    for _, stdout, stderr in outputs:
        assert "s3cret" not in stdout + stderr
{%- endif %}
