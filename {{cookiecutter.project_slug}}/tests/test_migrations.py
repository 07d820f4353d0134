"""The migrations build exactly the schema the models describe; readiness says when the database
is behind them; `make migrate` creates a missing database first."""

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from httpx import AsyncClient, Response
from sqlalchemy.engine import make_url
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.migrate import ADVISORY_LOCK_KEY
from {{ cookiecutter.package_name }}.readiness import NotReadyError
from {{ cookiecutter.package_name }}.resources.schema import SchemaCheck, read_revisions
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import (
    ALEMBIC_INI,
    PROJECT,
    RESOURCES,
    admin_execute,
    alembic_config,
    asyncpg_dsn,
    empty_database,
    migrate,
    new_database_url,
    scrape,
    serve,
)
from tests.servers import async_wait_until, free_port

# Every migration, in the order `alembic upgrade` applies them, as Alembic itself reads them.
REVISIONS = [
    script.revision
    for script in reversed(list(ScriptDirectory.from_config(Config(ALEMBIC_INI)).walk_revisions()))
]
PROBES = 3
# The migrations the package ships, and `python -m {{ cookiecutter.package_name }}.migrate`, which applies them.
MIGRATIONS = PROJECT / "src" / "{{ cookiecutter.package_name }}" / "migrations"
MIGRATE = [sys.executable, "-m", "{{ cookiecutter.package_name }}.migrate"]
# The alembic command of this venv, run from the project (its alembic.ini).
ALEMBIC = str(Path(sys.executable).parent / "alembic")
ALEMBIC_UPGRADE = [ALEMBIC, "upgrade", "head"]
LOCK_TIMEOUT = {"DB_MIGRATION_LOCK_TIMEOUT": "0.5"}


def test_the_migrated_schema_matches_the_models(database_url: str) -> None:
    # The `database_url` fixture has run every migration. `alembic check` compares the
    # database with the models, and fails on a model changed without a migration; then:
    # alembic revision --autogenerate -m "what changed"
    with alembic_config(database_url) as config:
        command.check(config)


def schema_events(events: list[EventDict]) -> list[EventDict]:
    return [event for event in events if event["event"].startswith("resource.migrations_")]


async def probe(client: AsyncClient) -> tuple[list[Response], float]:
    """PROBES readiness answers (each a check of its own, with READINESS_CACHE_SECONDS=0), and
    resource_up of postgres after them."""
    responses = [await client.get("/health/ready") for _ in range(PROBES)]
    return responses, (await scrape(client)).value("resource_up", resource="postgres")


async def test_readiness_is_503_naming_the_pending_migrations_until_they_run(
    make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    async with empty_database() as url:
        settings = make_settings(database_url=url, readiness_cache_seconds=0)
        async with serve(create_app(settings)) as client:
            behind, up_behind = await probe(client)
            await asyncio.to_thread(migrate, url)
            migrated, up_migrated = await probe(client)

    assert [response.status_code for response in behind] == [503] * PROBES
    body = behind[-1].json()
    assert body["status"] == "unavailable"
    assert body["resources"]["postgres"]["status"] == "unavailable"
    assert body["resources"]["postgres"]["error"] == f"pending migrations: {', '.join(REVISIONS)}"
    others = {name: body["resources"][name]["status"] for name in RESOURCES if name != "postgres"}
    assert others == dict.fromkeys(others, "ok")
    # Then the same app, without a restart.
    assert [response.status_code for response in migrated] == [200] * PROBES
    assert (up_behind, up_migrated) == (0, 1)
    # Once each, however many probes.
    logged = schema_events(events)
    assert [(event["event"], event["log_level"]) for event in logged] == [
        ("resource.migrations_pending", "warning"),
        ("resource.migrations_current", "info"),
    ]
    assert (logged[0]["pending"], logged[0]["applied"]) == (REVISIONS, [])
    assert logged[1]["heads"] == [REVISIONS[-1]]


async def test_without_the_schema_check_readiness_only_pings(
    make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    async with empty_database() as url:
        settings = make_settings(database_url=url, db_schema_check=False)
        async with serve(create_app(settings)) as client:
            ready = await client.get("/health/ready")

    assert ready.status_code == 200
    assert schema_events(events) == []


async def test_a_database_migrated_by_a_newer_release_keeps_readiness_up(
    make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    # During a rolling update the new release's migrations run before its pods start: the old
    # pods find a revision they do not know, and must keep serving until they are replaced.
    async with empty_database() as url:
        await asyncio.to_thread(migrate, url)
        await admin_execute("UPDATE alembic_version SET version_num = 'f00dcafe'", url)
        settings = make_settings(database_url=url, readiness_cache_seconds=0)
        async with serve(create_app(settings)) as client:
            ahead, up_ahead = await probe(client)

    assert [response.status_code for response in ahead] == [200] * PROBES
    assert up_ahead == 1
    logged = schema_events(events)
    assert [(event["event"], event["log_level"]) for event in logged] == [
        ("resource.migrations_unknown", "warning")
    ]
    assert logged[0]["unknown"] == ["f00dcafe"]


def alembic_graph(config: Config) -> dict[str, tuple[str, ...]]:
    """Each revision and those it follows, as Alembic reads them."""
    return {
        script.revision: follows(script.down_revision)
        for script in ScriptDirectory.from_config(config).walk_revisions()
    }


def follows(down_revision: str | Sequence[str] | None) -> tuple[str, ...]:
    if isinstance(down_revision, str):
        return (down_revision,)
    return tuple(down_revision or ())


async def test_a_role_that_cannot_read_the_applied_migrations_is_not_ready(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    role, password = f"noread_{new_database_url()[0]}", "s3cret-role"
    await admin_execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    try:
        url = make_url(database_url).set(username=role, password=password)
        settings = make_settings(database_url=url.render_as_string(hide_password=False))
        async with serve(create_app(settings)) as client:
            ready = await client.get("/health/ready")
    finally:
        await admin_execute(f'DROP ROLE "{role}"')

    assert ready.status_code == 503
    assert ready.json()["resources"]["postgres"]["error"] == "InsufficientPrivilegeError"


def test_the_service_reads_its_own_migrations_as_alembic_does() -> None:
    assert read_revisions() == alembic_graph(Config(ALEMBIC_INI))


def test_a_migration_the_service_cannot_read_stops_it(tmp_path: Path) -> None:
    shutil.copytree(MIGRATIONS / "versions", tmp_path, dirs_exist_ok=True)
    (tmp_path / ".#0002_being_edited.py").write_text("an editor's lock file, not Python")
    latin = "\n".join(
        [
            "# -*- coding: latin-1 -*-",
            '"""Caf\xe9."""',
            'revision = "0002"',
            f'down_revision = "{REVISIONS[-1]}"',
        ]
    )
    (tmp_path / "0002_latin.py").write_bytes(latin.encode("latin-1"))
    assert read_revisions(tmp_path)["0002"] == (REVISIONS[-1],)

    (tmp_path / "0003_computed.py").write_text('REVISION = "0003"\nrevision = REVISION\n')
    with pytest.raises(ValueError, match=r"^migration 0003_computed.py: its revision is not a"):
        read_revisions(tmp_path)


def test_the_service_reads_the_migrations_as_alembic_does(tmp_path: Path) -> None:
    # The project's migrations, then a branch and its merge: head -> (b1 -> b2, c1) -> m1.
    shutil.copytree(MIGRATIONS, tmp_path / "migrations")
    config = Config(ALEMBIC_INI)
    config.set_main_option("script_location", str(tmp_path / "migrations"))
    versions = tmp_path / "migrations" / "versions"
    head = REVISIONS[-1]
    command.revision(config, "b1", rev_id="b1", head=head)
    command.revision(config, "b2", rev_id="b2", head="b1")
    command.revision(config, "c1", rev_id="c1", head=head, splice=True)
    branched, branched_by_alembic = read_revisions(versions), alembic_graph(config)
    command.merge(config, "heads", message="m1", rev_id="m1")
    merged, merged_by_alembic = read_revisions(versions), alembic_graph(config)

    assert branched == branched_by_alembic
    assert SchemaCheck(branched).heads == {"b2", "c1"}
    assert merged == merged_by_alembic
    check = SchemaCheck(merged)
    assert check.heads == {"m1"}
    # In an order they can be applied in: the merge last.
    with pytest.raises(NotReadyError, match=r"^pending migrations: (b2, c1|c1, b2), m1$"):
        check.compare(["b1"])
    with pytest.raises(NotReadyError, match=r"^pending migrations: m1$"):
        check.compare(["b2", "c1"])
    check.compare(["m1"])


def run_on(
    database_url: str, command: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`command` with DATABASE_URL (and `env`) alone in its environment."""
    return subprocess.run(
        command,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": database_url, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def create_database(database_url: str) -> subprocess.CompletedProcess[str]:
    """scripts/create_database.py, as `make migrate` runs it."""
    return run_on(database_url, [sys.executable, "scripts/create_database.py"], PROJECT)


def test_a_missing_database_is_created_once(tmp_path: Path) -> None:
    name, url = new_database_url()
    try:
        first, second = create_database(url), create_database(url)
        migrate(url)
    finally:
        asyncio.run(admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    assert (first.returncode, first.stderr) == (0, "")
    assert first.stdout.startswith(f"created database '{name}' on ")
    assert (second.returncode, second.stderr) == (0, "")
    assert second.stdout.startswith(f"found database '{name}' on ")


def test_a_database_that_cannot_be_created_is_one_line_and_exit_1() -> None:
    name, url = new_database_url()
    role, password = f"nocreatedb_{name}", "s3cret-role"
    unreachable = make_url(url).set(port=free_port()).render_as_string(hide_password=False)
    unprivileged = make_url(url).set(username=role, password=password)
    asyncio.run(admin_execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"))
    try:
        refused = create_database(unreachable)
        denied = create_database(unprivileged.render_as_string(hide_password=False))
    finally:
        asyncio.run(admin_execute(f'DROP ROLE "{role}"'))

    for result in (refused, denied):
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr.startswith(f"cannot create database '{name}' on ")
        assert result.stderr.count("\n") == 1
        assert password not in result.stderr
    assert "permission denied to create database" in denied.stderr


def upgrade(command: list[str], database_url: str, cwd: Path) -> tuple[int, str, str]:
    result = run_on(database_url, command, cwd)
    return result.returncode, result.stdout, result.stderr


async def upgrades(command: list[str], cwd: Path) -> list[tuple[int, str, str]]:
    """`command` run on a new database, again on it migrated, and on it once a newer release
    migrated it (a revision this code does not know)."""
    async with empty_database() as url:
        new = await asyncio.to_thread(upgrade, command, url, cwd)
        again = await asyncio.to_thread(upgrade, command, url, cwd)
        await admin_execute("UPDATE alembic_version SET version_num = 'f00dcafe'", url)
        unknown = await asyncio.to_thread(upgrade, command, url, cwd)
    return [new, again, unknown]


async def test_the_migrate_module_answers_as_the_alembic_command_does(tmp_path: Path) -> None:
    # The module from a folder with no alembic.ini; the command from the project's.
    by_module = await upgrades(MIGRATE, tmp_path)
    by_alembic = await upgrades(ALEMBIC_UPGRADE, PROJECT)

    assert by_module == by_alembic
    new, again, unknown = by_module
    assert new[0] == again[0] == 0
    assert "Running upgrade  -> 0001" in new[2]
    assert "Running upgrade" not in again[2]
    assert unknown[:2] == (255, "FAILED: Can't locate revision identified by 'f00dcafe'\n")


async def test_the_migrations_read_the_url_as_the_service_does(tmp_path: Path) -> None:
    # Options of libpq's that asyncpg reads too; SQLAlchemy alone would pass them to asyncpg as
    # keyword arguments (TypeError: unexpected keyword argument 'sslmode').
    async with empty_database() as url:
        with_options = f"{url}?sslmode=disable&application_name=migrations"
        migrated = await asyncio.to_thread(run_on, with_options, MIGRATE, tmp_path)

    assert migrated.returncode == 0, migrated.stderr


def test_the_migrate_module_only_migrates(tmp_path: Path) -> None:
    # A port nothing listens on: neither may connect.
    unreachable = make_url(new_database_url()[1]).set(port=free_port())
    unreachable_url = unreachable.render_as_string(hide_password=False)
    helped = run_on(unreachable_url, [*MIGRATE, "--help"], tmp_path)
    refused = run_on(unreachable_url, [*MIGRATE, "downgrade", "base"], tmp_path)

    assert (helped.returncode, helped.stderr) == (0, "")
    assert helped.stdout.startswith("usage: python -m {{ cookiecutter.package_name }}.migrate")
    assert refused.returncode == 2
    assert "unrecognized arguments: downgrade base" in refused.stderr


async def test_a_migration_waiting_on_a_lock_fails_after_the_lock_timeout() -> None:
    # A long transaction has read the table the downgrade drops: the DROP must wait for it.
    async with empty_database() as url:
        await asyncio.to_thread(migrate, url)
        reader = await asyncpg.connect(asyncpg_dsn(url))
        try:
            async with reader.transaction():
                await reader.fetch("SELECT * FROM notes")
                started = time.monotonic()
                downgrade = await asyncio.to_thread(
                    run_on, url, [ALEMBIC, "downgrade", "base"], PROJECT, LOCK_TIMEOUT
                )
                waited = time.monotonic() - started
            tables = await reader.fetch("SELECT FROM pg_tables WHERE tablename = 'notes'")
        finally:
            await reader.close()

    assert downgrade.returncode == 1
    assert "canceling statement due to lock timeout" in downgrade.stderr
    # Well before the Job's deadline, however long the reader keeps its transaction.
    assert waited < 30
    # Nothing half done: the whole run was one transaction.
    assert len(tables) == 1


async def test_runs_at_once_go_one_after_the_other(tmp_path: Path) -> None:
    async with empty_database() as url:
        holder = await asyncpg.connect(asyncpg_dsn(url))
        try:
            # Held as a first run holds it: the second waits, and does nothing meanwhile.
            await holder.execute(f"SELECT pg_advisory_lock({ADVISORY_LOCK_KEY})")
            second = await asyncio.to_thread(start_on, url, MIGRATE, tmp_path)
            await async_wait_until(
                partial(waits_for_the_lock, holder), within=30, message="it never waited"
            )
            tables_meanwhile = await holder.fetch(
                "SELECT FROM pg_tables WHERE tablename = 'alembic_version'"
            )
            await holder.execute(f"SELECT pg_advisory_unlock({ADVISORY_LOCK_KEY})")
            _, stderr = await asyncio.to_thread(second.communicate, timeout=60)
        finally:
            await holder.close()

    assert tables_meanwhile == []
    assert second.returncode == 0, stderr
    assert "Running upgrade  -> 0001" in stderr


def start_on(database_url: str, command: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def waits_for_the_lock(connection: asyncpg.Connection) -> bool:
    waiting = await connection.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
    )
    return bool(waiting)
