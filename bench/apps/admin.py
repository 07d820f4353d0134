"""Setup helpers run in the baked service's venv: the benchmark database, and the versions of
everything measured (the Python packages and the servers).

    python admin.py create-db ADMIN_DSN NAME     drop NAME if it exists, create it empty
    python admin.py drop-db ADMIN_DSN NAME
    python admin.py versions ADMIN_DSN REDIS_URL  one JSON object on stdout
    python admin.py delete-keys REDIS_URL PREFIX  delete every key starting with PREFIX
"""

import asyncio
import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

import asyncpg
from redis.asyncio import Redis

PACKAGES = [
    "fastapi",
    "starlette",
    "pydantic",
    "uvicorn",
    "uvloop",
    "httptools",
    "sqlalchemy",
    "asyncpg",
    "redis",
    "httpx",
    "aiohttp",
    "structlog",
    "orjson",
]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def create_db(admin_dsn: str, name: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)")
        await connection.execute(f"CREATE DATABASE {_quoted(name)}")
    finally:
        await connection.close()


async def drop_db(admin_dsn: str, name: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)")
    finally:
        await connection.close()


async def delete_keys(redis_url: str, prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


async def versions(admin_dsn: str, redis_url: str) -> dict[str, str | None]:
    connection = await asyncpg.connect(admin_dsn)
    try:
        postgres = str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        redis_server = str((await redis.info("server"))["redis_version"])
    finally:
        await redis.aclose()
    return {
        "python": platform.python_version(),
        **{name: _package_version(name) for name in PACKAGES},
        "postgresql-server": postgres,
        "redis-server": redis_server,
    }


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "create-db":
        asyncio.run(create_db(*args))
    elif command == "drop-db":
        asyncio.run(drop_db(*args))
    elif command == "delete-keys":
        asyncio.run(delete_keys(*args))
    elif command == "versions":
        print(json.dumps(asyncio.run(versions(*args))))
    else:
        raise SystemExit(f"unknown command: {command}")


if __name__ == "__main__":
    main()
