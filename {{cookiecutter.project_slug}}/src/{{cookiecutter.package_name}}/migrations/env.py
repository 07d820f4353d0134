"""How Alembic reaches the database: DATABASE_URL, read as the service reads it, on asyncpg."""

import asyncio
from functools import partial
from logging.config import fileConfig

import asyncpg
from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import URL, Connection, make_url

from {{ cookiecutter.package_name }}.migrate import ADVISORY_LOCK_KEY
from {{ cookiecutter.package_name }}.models import Base
from {{ cookiecutter.package_name }}.resources.postgres import asyncpg_dsn, asyncpg_engine
from {{ cookiecutter.package_name }}.settings import DatabaseSettings, load_database_settings

# What `alembic revision --autogenerate` and `alembic check` compare the database with.
target_metadata = Base.metadata


def run_migrations_offline(url: URL) -> None:
    """`alembic upgrade head --sql`: print the SQL instead of running it."""
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations(connection: Connection, lock_timeout: float) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # A changed server default is a difference a revision must carry, like a changed type.
        compare_server_default=True,
    )
    with context.begin_transaction():
        # Held until the run commits: another run waits here, then finds the revisions applied.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        # For the run's transaction only (as a pooler in transaction mode requires). A value
        # in milliseconds: a setting cannot be a bind parameter.
        connection.execute(text(f"SET LOCAL lock_timeout = {round(lock_timeout * 1000)}"))
        context.run_migrations()


async def run_migrations_online(settings: DatabaseSettings) -> None:
    url = make_url(settings.database_url.get_secret_value())
    engine = asyncpg_engine(
        url,
        # Connected as the service connects: asyncpg reads the whole URL. With no statement
        # cache (asyncpg's, and SQLAlchemy's adapter's), no statement outlives its transaction,
        # so the migrations also run through a transaction-mode pooler (PgBouncer).
        partial(asyncpg.connect, asyncpg_dsn(url), statement_cache_size=0),
        prepared_statement_cache_size=0,
        # One connection for one run: nothing to pool.
        poolclass=pool.NullPool,
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations, settings.db_migration_lock_timeout)
    finally:
        await engine.dispose()


config = context.config
# The tests run the migrations in their own process and keep their logging as it is.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)

settings = load_database_settings()
if context.is_offline_mode():
    run_migrations_offline(make_url(settings.database_url.get_secret_value()))
else:
    asyncio.run(run_migrations_online(settings))
