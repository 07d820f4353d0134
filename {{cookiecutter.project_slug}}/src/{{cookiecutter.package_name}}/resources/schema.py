"""The schema this code needs: the migrations shipped inside the package (read once at startup,
wherever it is installed), compared by each readiness check with those applied to the database
(Alembic's version table, read in the check's own round trip). A database behind them makes
/health/ready a 503 naming the pending migrations, rather than each route a 500."""

import ast
import asyncio
from collections.abc import Iterable, Mapping, Sequence
from graphlib import TopologicalSorter
from importlib.resources import files
from importlib.resources.abc import Traversable

import structlog
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection

from {{ cookiecutter.package_name }}.readiness import NotReadyError
from {{ cookiecutter.package_name }}.settings import Settings

log = structlog.get_logger(__name__)

# Alembic's table of applied revisions, under the default name migrations/env.py keeps.
_READ_APPLIED = text("SELECT version_num FROM alembic_version")
# The table does not exist: no migration ever ran on this database.
_UNDEFINED_TABLE = "42P01"
# The migrations `python -m {{ cookiecutter.package_name }}.migrate` applies (its SCRIPT_LOCATION).
VERSIONS = files("{{ cookiecutter.package_name }}") / "migrations" / "versions"


def read_revisions(versions: Traversable = VERSIONS) -> dict[str, tuple[str, ...]]:
    """Each migration's revision and the revisions it follows, from the files in `versions`,
    read rather than imported: loading them with Alembic's script directory would add Alembic,
    Mako and Pygments to every start of the service (about 10 MB and a tenth of a second).
    tests/test_migrations.py checks that Alembic reads the same."""
    revisions: dict[str, tuple[str, ...]] = {}
    for path in sorted(versions.iterdir(), key=lambda path: path.name):
        if not _is_migration(path.name):
            continue
        constants = _module_constants(path)
        revision = constants.get("revision")
        if not isinstance(revision, str):
            # Alembic, which imports the file, might know it: readiness would not.
            raise ValueError(f"migration {path.name}: its revision is not a string literal")
        down = constants.get("down_revision")
        if isinstance(down, str):
            revisions[revision] = (down,)
        else:  # None for the first migration, several revisions for a merge
            revisions[revision] = tuple(down) if isinstance(down, tuple | list) else ()
    return revisions


def _is_migration(name: str) -> bool:
    # Alembic's own rule: editors' lock files (.#name.py) and __init__.py are not migrations.
    return name.endswith(".py") and not name.startswith((".#", "__init__"))


def _module_constants(path: Traversable) -> dict[str, object]:
    """The module's top-level `name = <literal>` assignments (annotated or not)."""
    constants: dict[str, object] = {}
    # Bytes, so that a `# -*- coding: ... -*-` line is honoured as Python honours it.
    for node in ast.parse(path.read_bytes(), filename=path.name).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name):
            try:
                constants[target.id] = ast.literal_eval(value)
            except ValueError:
                continue
    return constants


class SchemaCheck:
    """Compares the revisions applied to the database with the migrations' heads, logging each
    change of what it finds once (checks are shared by every probe, so never concurrently)."""

    def __init__(self, revisions: Mapping[str, tuple[str, ...]]) -> None:
        self._revisions = revisions
        self.heads = frozenset(revisions).difference(*revisions.values())
        # Each revision's place in the order the migrations are applied in.
        self._order = {
            revision: place
            for place, revision in enumerate(TopologicalSorter(revisions).static_order())
        }
        # At the heads unless found otherwise: a start against a migrated database logs nothing.
        self._found: tuple[str, tuple[str, ...]] = ("current", ())

    def compare(self, applied: Iterable[str]) -> None:
        """Raise NotReadyError naming the pending migrations while the database is behind. A
        revision this code does not know comes from a newer release, whose migrations ran
        before its pods started: the old pods keep serving until they are replaced."""
        applied_now = frozenset(applied)
        found = self._find(applied_now)
        if found != self._found:
            self._log(found, applied_now)
            self._found = found
        state, revisions = found
        if state == "pending":
            raise NotReadyError(f"pending migrations: {', '.join(revisions)}")

    def _find(self, applied: frozenset[str]) -> tuple[str, tuple[str, ...]]:
        if applied == self.heads:
            return "current", ()
        if unknown := applied - self._revisions.keys():
            return "unknown", tuple(sorted(unknown))
        if pending := self._pending(applied):
            return "pending", pending
        return "current", ()

    def _pending(self, applied: frozenset[str]) -> tuple[str, ...]:
        """The migrations neither applied nor before an applied one, in the order they apply."""
        done: set[str] = set()
        todo = list(applied)
        while todo:
            revision = todo.pop()
            if revision not in done:
                done.add(revision)
                todo.extend(self._revisions[revision])
        return tuple(sorted(self._revisions.keys() - done, key=self._order.__getitem__))

    def _log(self, found: tuple[str, tuple[str, ...]], applied: frozenset[str]) -> None:
        state, revisions = found
        if state == "pending":
            log.warning(
                "resource.migrations_pending",
                resource="postgres",
                pending=list(revisions),
                applied=sorted(applied),
            )
        elif state == "unknown":
            log.warning("resource.migrations_unknown", resource="postgres", unknown=list(revisions))
        else:
            log.info("resource.migrations_current", resource="postgres", heads=sorted(self.heads))


async def applied_revisions(connection: AsyncConnection) -> Sequence[str]:
    try:
        return (await connection.execute(_READ_APPLIED)).scalars().all()
    except ProgrammingError as exc:
        if getattr(exc.orig, "sqlstate", None) == _UNDEFINED_TABLE:
            return ()
        raise


async def schema_check(settings: Settings) -> SchemaCheck | None:
    """The check of the package's migrations, or None with DB_SCHEMA_CHECK off."""
    if not settings.db_schema_check:
        return None
    return SchemaCheck(await asyncio.to_thread(read_revisions))
