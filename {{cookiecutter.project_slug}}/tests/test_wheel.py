"""The service as its users deploy it: a wheel installed into a fresh venv (no source tree, no
alembic.ini) and started from another folder, where it finds everything it ships.
{%- if cookiecutter.use_postgres %} There,
`python -m {{ cookiecutter.package_name }}.migrate` applies the migrations inside the wheel, and readiness turns 200
without a restart.
{%- endif %}"""

{% if cookiecutter.use_postgres -%}
import asyncio
{% endif -%}
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

{% if cookiecutter.use_postgres -%}
from tests.conftest import PROJECT, admin_execute, new_database_url
{%- else -%}
from tests.conftest import PROJECT
{%- endif %}
from tests.processes import PACKAGE, finish, running, url
from tests.servers import cannot_start, wait_until

# The uv the project's Makefile runs (UV=...): it builds the wheel and fills the venv from uv.lock.
UV = os.environ.get("UV", "uv")
# Where the venv's Python imports the service from.
IMPORTED_FROM = f"import {PACKAGE}; print({PACKAGE}.__file__)"


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = shutil.which(UV)
    if uv is None:
        cannot_start(f"no {UV} on PATH to build the wheel with: install uv, or set UV")
    out = tmp_path_factory.mktemp("dist")
    run([uv, "build", "--wheel", "--out-dir", str(out), str(PROJECT)], PROJECT, dict(os.environ))
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python of a fresh venv holding the locked dependencies and the wheel, nothing else."""
    uv = str(shutil.which(UV))
    venv = tmp_path_factory.mktemp("venv")
    env = dict(os.environ) | {"UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    sync = [uv, "sync", "--locked", "--no-dev", "--no-install-project", "--python", sys.executable]
    run(sync, PROJECT, env)
    python = venv / "bin" / "python"
    run([uv, "pip", "install", "--python", str(python), "--no-deps", str(wheel)], PROJECT, env)
    return python


def test_the_wheel_holds_the_package_and_what_it_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())

    assert f"{PACKAGE}/__main__.py" in names
{%- if cookiecutter.use_postgres %}
    migrations = {name for name in names if name.startswith(f"{PACKAGE}/migrations/")}
    shipped = {
        path.relative_to(PROJECT / "src").as_posix()
        for path in (PROJECT / "src" / PACKAGE / "migrations").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert migrations == shipped
    assert f"{PACKAGE}/migrations/versions/0001_create_notes.py" in migrations
{%- endif %}
    assert not any(name.startswith(("tests/", "scripts/")) for name in names)


def wait_for_200(env: dict[str, str], path: str) -> None:
    def answered_200() -> bool:
        try:
            return httpx.get(url(env, path), timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answered_200, timeout=30, message=f"{path} never answered 200")


def test_the_installed_service_runs_from_any_folder(
    installed: Path, service_env: dict[str, str], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = service_env | {"READINESS_CACHE_SECONDS": "0"}
    del env["PYTHONPATH"]  # nothing of the source tree in reach
    imported_from = run([str(installed), "-c", IMPORTED_FROM], elsewhere, env).stdout
    assert imported_from.startswith(str(installed.parent.parent)), imported_from
{%- if cookiecutter.use_postgres %}
    name, env["DATABASE_URL"] = new_database_url()
    asyncio.run(admin_execute(f'CREATE DATABASE "{name}"'))
    try:
        with running("python -m", env, elsewhere, python=installed) as service:
            wait_for_200(env, "/health/live")
            pending = httpx.get(url(env, "/health/ready"))
            migrated = subprocess.run(
                [str(installed), "-m", f"{PACKAGE}.migrate"],
                cwd=elsewhere,
                env={"PATH": env["PATH"], "HOME": env["HOME"], "DATABASE_URL": env["DATABASE_URL"]},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            wait_for_200(env, "/health/ready")
            service.process.send_signal(signal.SIGTERM)
            returncode, _, stderr = finish(service)
    finally:
        asyncio.run(admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    assert pending.status_code == 503
{%- if cookiecutter.use_rabbitmq %}
    assert pending.json()["resources"]["postgres"]["error"] == "pending migrations: 0001, 0002"
{%- else %}
    assert pending.json()["resources"]["postgres"]["error"] == "pending migrations: 0001"
{%- endif %}
    assert migrated.returncode == 0, migrated.stderr
    assert "Running upgrade  -> 0001, Create the notes table" in migrated.stderr
{%- else %}
    with running("python -m", env, elsewhere, python=installed) as service:
        wait_for_200(env, "/health/ready")
        service.process.send_signal(signal.SIGTERM)
        returncode, _, stderr = finish(service)
{%- endif %}
    assert returncode == 0, stderr
