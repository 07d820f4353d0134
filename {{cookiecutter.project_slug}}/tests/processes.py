"""The service as a process, started the ways its users start it: the commands, a running
service whose JSON log a test can read while it runs, and waiting for it to be ready."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.servers import TcpProxy, wait_until

PACKAGE = "{{ cookiecutter.package_name }}"
COMMANDS = {
    "python -m": [sys.executable, "-m", PACKAGE],
    "uvicorn": [sys.executable, "-m", "uvicorn", f"{PACKAGE}.main:app"],
}
# tests/slow_app.py (the app plus slow routes), served exactly as `python -m` serves the app.
SLOW_APP = [
    sys.executable,
    "-c",
    f"from {PACKAGE}.__main__ import main; main('tests.slow_app:app')",
]


@dataclass
class Service:
    process: subprocess.Popen[str]
    # stdout goes to a file rather than a pipe: a test reads it while the service runs, and a
    # full pipe can never block the service.
    stdout: Path

    def log(self) -> list[dict[str, Any]]:
        """The complete JSON lines logged so far."""
        text = self.stdout.read_text()
        return json_lines(text[: text.rfind("\n") + 1])


@contextmanager
def running(
    how: str, env: dict[str, str], cwd: Path, python: Path | None = None
) -> Iterator[Service]:
    """The service started `how` (a key of COMMANDS, or "slow app"), by this venv's Python or
    `python`'s (another venv's)."""
    # uvicorn's CLI takes the port as an option; `python -m` reads PORT from the settings.
    port_option = ["--port", env["PORT"]] if how == "uvicorn" else []
    executable, *arguments = SLOW_APP if how == "slow app" else COMMANDS[how]
    command = [str(python or executable), *arguments]
    stdout = cwd / "stdout.log"
    with stdout.open("w") as stdout_file:
        process = subprocess.Popen(
            [*command, *port_option],
            env=env,
            cwd=cwd,  # no .env file in reach
            stdout=stdout_file,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        yield Service(process, stdout)
    finally:
        if process.poll() is None:
            # Its workers first: orphaned, they would hold its output open and never exit.
            for child in children(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            process.kill()
            process.communicate()


def children(pid: int) -> set[int]:
    """The processes `pid` started (uvicorn's workers)."""
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:  # gone, or no /proc
        return set()
    return {int(child) for child in listed.split()}


def wait_until_ready(service: Service, port: str) -> None:
    def ready() -> bool:
        assert service.process.poll() is None, "the service exited during startup"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, timeout=30, message="the service never became ready")


def url(env: dict[str, str], path: str) -> str:
    return f"http://127.0.0.1:{env['PORT']}{path}"


def finish(service: Service) -> tuple[int, str, str]:
    _, stderr = service.process.communicate(timeout=30)
    return service.process.returncode, service.stdout.read_text(), stderr


def json_lines(stdout: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stdout.splitlines()]
    for line in lines:
        assert {"event", "level", "timestamp"} <= set(line), line
    return lines


def stopped_while_silent(
    env: dict[str, str], cwd: Path, proxy: TcpProxy
) -> tuple[float, list[dict[str, Any]]]:
    """Serve with `env`, make `proxy` (in front of one of its resources) go silent, SIGTERM the
    service, which must exit 0: the seconds that took, and its log."""
    with running("python -m", env, cwd) as service:
        wait_until_ready(service, env["PORT"])
        proxy.go_silent()
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        returncode, stdout, stderr = finish(service)
        seconds = time.monotonic() - signalled
    assert returncode == 0, stderr
    return seconds, json_lines(stdout)


def closing_events(log: list[dict[str, Any]]) -> dict[str, str]:
    """How each resource ended: resource.closed or resource.close_failed."""
    ends = {"resource.closed", "resource.close_failed"}
    return {line["resource"]: line["event"] for line in log if line["event"] in ends}


def worst_case_stop_seconds(env: dict[str, str], resources: int) -> float:
{%- if cookiecutter.use_postgres and cookiecutter.use_rabbitmq %}
    """The bound from SIGTERM to exit (docs/operating.md, Shutdown): DRAIN_SECONDS +
    GRACEFUL_SHUTDOWN_TIMEOUT + BACKGROUND_DRAIN_SECONDS + RABBITMQ_DRAIN_SECONDS + (resources +
    2) x SHUTDOWN_TIMEOUT (the background tasks' cancellation and the outbox relay's stop are two
    more steps), with the defaults where `env` sets none."""
{%- elif cookiecutter.use_rabbitmq %}
    """The bound from SIGTERM to exit (docs/operating.md, Shutdown): DRAIN_SECONDS +
    GRACEFUL_SHUTDOWN_TIMEOUT + BACKGROUND_DRAIN_SECONDS + RABBITMQ_DRAIN_SECONDS + (resources +
    1) x SHUTDOWN_TIMEOUT (the background tasks' cancellation is one more step), with the
    defaults where `env` sets none."""
{%- else %}
    """The bound from SIGTERM to exit (docs/operating.md, Shutdown): DRAIN_SECONDS +
    GRACEFUL_SHUTDOWN_TIMEOUT + BACKGROUND_DRAIN_SECONDS + (resources + 1) x SHUTDOWN_TIMEOUT (the
    background tasks' cancellation is one more step), with the defaults where `env` sets none."""
{%- endif %}
    return (
        float(env.get("DRAIN_SECONDS", 0))
        + float(env.get("GRACEFUL_SHUTDOWN_TIMEOUT", 10))
        + float(env.get("BACKGROUND_DRAIN_SECONDS", 5))
{%- if cookiecutter.use_rabbitmq %}
        + float(env.get("RABBITMQ_DRAIN_SECONDS", 5))
{%- endif %}
{%- if cookiecutter.use_postgres and cookiecutter.use_rabbitmq %}
        + (resources + 2) * float(env.get("SHUTDOWN_TIMEOUT", 5))
{%- else %}
        + (resources + 1) * float(env.get("SHUTDOWN_TIMEOUT", 5))
{%- endif %}
    )


def traceback_frames(line: dict[str, Any]) -> list[dict[str, Any]]:
    """The frames of a JSON line's traceback, of every exception in its chain."""
    return [frame for exception in line["exception"] for frame in exception["frames"]]
