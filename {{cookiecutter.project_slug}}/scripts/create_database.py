"""Create the database DATABASE_URL names, if the server does not have it yet.

    python scripts/create_database.py      # `make migrate` runs it before the migrations

DATABASE_URL is read as the service reads it (the environment, then `.env`). To ask the server,
the script connects to its `postgres` database, there on every PostgreSQL server, as the same
user, who needs the CREATEDB privilege only when the database is missing. It prints what it did
in one line and exits 1 with one line when it cannot (never the URL's password).
"""

import asyncio
import sys

import asyncpg
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.settings import load_database_url

# The server's own maintenance database: where to connect while the wanted one does not exist.
MAINTENANCE_DATABASE = "postgres"
CONNECT_TIMEOUT_SECONDS = 10


def quoted(name: str) -> str:
    """`name` as a PostgreSQL identifier, whatever characters it holds."""
    return '"' + name.replace('"', '""') + '"'


async def create_database(url: URL) -> bool:
    """Whether the database had to be created."""
    assert url.database is not None
    maintenance = url.set(drivername="postgresql", database=MAINTENANCE_DATABASE)
    connection = await asyncpg.connect(
        maintenance.render_as_string(hide_password=False), timeout=CONNECT_TIMEOUT_SECONDS
    )
    try:
        if await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", url.database):
            return False
        await connection.execute(f"CREATE DATABASE {quoted(url.database)}")
        return True
    finally:
        await connection.close()


def main() -> int:
    url = load_database_url()
    if not url.database:
        print("DATABASE_URL names no database: add one, as in .../my_database", file=sys.stderr)
        return 1
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    try:
        created = asyncio.run(create_database(url))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        print(f"cannot create database {url.database!r} on {where}: {exc}", file=sys.stderr)
        return 1
    print(f"{'created' if created else 'found'} database {url.database!r} on {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
