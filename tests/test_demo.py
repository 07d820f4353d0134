"""`make demo` works end to end: the default service is baked and installed, its database of its
own is created and migrated, and the example routes answer the requests of the quick start in
docs/developing.md.

The test runs `make demo-prepare` (all of `make demo` but the service in the foreground) into a
temporary folder, with a database of the test's own, then starts the service itself on a free
port and runs that page's curl commands against it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from conftest import TEMPLATE_DIR, Baker, project_servers, psql, run_step

ADMIN_DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
README_ADDRESS = "localhost:8000"
# The quick start's requests (docs/developing.md), in its order; the test asserts each answer below.
REQUESTS = [
    "curl -s localhost:8000/health/ready",
    "curl -s localhost:8000/notes -H 'Content-Type: application/json' -d '{\"text\": \"hello\"}'",
    "curl -s localhost:8000/notes/1",
    "curl -s -X PUT localhost:8000/cache/greeting -H 'Content-Type: application/json' -d '{\"value\": \"hi\"}'",
    "curl -s localhost:8000/cache/greeting",
    "curl -s localhost:8000/upstream/health/live",
]


def readme_requests() -> list[str]:
    """The curl commands of the template's quick start, in docs/developing.md."""
    page = (TEMPLATE_DIR / "docs" / "developing.md").read_text()
    quick_start = page.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in quick_start.splitlines() if line.startswith("curl ")]


def database_url(name: str) -> str:
    """The URL of database `name` on the server of ADMIN_DATABASE_URL, for libpq (psql)."""
    parts = urlsplit(ADMIN_DATABASE_URL)
    return urlunsplit(parts._replace(scheme=parts.scheme.split("+")[0], path=f"/{name}"))


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as response:  # noqa: S310
            return response.status == 200
    except (urllib.error.URLError, ConnectionError):  # not listening yet, or 503
        return False


@pytest.mark.slow
def test_the_demo_migrates_a_database_of_its_own_and_answers_the_readme_requests(
    baker: Baker, tmp_path: Path
) -> None:
    assert readme_requests() == REQUESTS
    name = f"demo_{uuid.uuid4().hex[:12]}"
    admin = database_url("postgres")
    template_venv = Path(sys.prefix)  # the template's tools, with which this test runs
    (tmp_path / "tmp").mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PYTEST_") and key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    } | {
        # Over the .env of the demo (database my_service): real variables win.
        "DATABASE_URL": database_url(name),
        "COOKIECUTTER_CONFIG": str(baker.config_file),  # no replay files in the home directory
        "TMPDIR": str(tmp_path / "tmp"),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
    }
    argv = [
        "make",
        "-o",  # the template's venv is this test's: make must not reinstall it
        f"{template_venv}/.installed",
        "demo-prepare",
        f"VENV={template_venv}",
        f"BUILD={tmp_path / 'build'}",
    ]
    project = tmp_path / "build" / "my-service"
    log = tmp_path / "service.log"
    answers: list[dict] = []
    try:
        prepared = run_step("make demo-prepare", argv, cwd=TEMPLATE_DIR, env=env, timeout=900)
        if not prepared.ok:
            pytest.fail(prepared.report(), pytrace=False)
        migrated_to = psql(database_url(name), "SELECT version_num FROM alembic_version")

        port = project_servers.free_port()
        service_env = env | {"PORT": str(port), "HTTP_CLIENT_BASE_URL": f"http://127.0.0.1:{port}"}
        with log.open("w") as output:
            service = subprocess.Popen(
                [project / ".venv" / "bin" / "python", "-m", "my_service"],
                cwd=project,
                env=service_env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            project_servers.wait_until(lambda: ready(port), timeout=60, message="the demo never became ready")
            for request in REQUESTS:
                command = request.replace(README_ADDRESS, f"127.0.0.1:{port}")
                done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30, check=False)
                assert done.returncode == 0, f"{command}: {done.stderr}"
                answers.append(json.loads(done.stdout))
        finally:
            service.send_signal(signal.SIGTERM)
            returncode = service.wait(timeout=30)
    finally:
        psql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    assert returncode == 0, log.read_text()
    # The demo's own configuration: a database of its own, not the server's `postgres`.
    assert "DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/my_service\n" in (project / ".env").read_text()
    assert migrated_to == "0001"
    health, created, read, put, got, upstream = answers
    assert health["status"] == "ok"
    assert {resource: state["status"] for resource, state in health["resources"].items()} == {
        "postgres": "ok",
        "redis": "ok",
        "http_client": "ok",
    }
    assert (created["id"], created["text"]) == (1, "hello")
    assert read == created
    assert put == got == {"key": "greeting", "value": "hi"}
    assert upstream == {"status_code": 200, "body": '{"status":"ok"}'}
