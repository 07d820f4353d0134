"""Redis: one redis.asyncio client, and so one connection pool, for the whole process."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from urllib.parse import urlsplit

import redis
from redis import DriverInfo
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.requests import Request
from starlette.responses import JSONResponse

from {{ cookiecutter.package_name }}.metrics import ConnectionCounts
from {{ cookiecutter.package_name }}.resources.lifecycle import (
    ResourceUnavailableError,
    describe,
    lifecycle,
    respond_unavailable,
)
from {{ cookiecutter.package_name }}.settings import Settings


async def ping(client: Redis) -> None:
    await client.ping()


def connection_counts(client: Redis) -> ConnectionCounts:
    pool = client.connection_pool
    (idle, _), (used, _) = pool.get_connection_count()
    return ConnectionCounts(used=used, idle=idle, limit=pool.max_connections)


# After the client's own retries these only ever mean that Redis is not answering, wherever
# they are raised: the app answers them with a 503, at no cost to the requests that succeed.
OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError)


async def respond_redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return await respond_unavailable(request, ResourceUnavailableError("redis", describe(exc)))


@asynccontextmanager
async def open_redis(settings: Settings, deadline: float) -> AsyncIterator[Redis]:
    url = settings.redis_url.get_secret_value()
    client = Redis.from_url(
        url,
        decode_responses=True,
        max_connections=settings.redis_max_connections,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        # Explicit rather than the library default: two quick retries of a command that lost
        # its connection, so a Redis restart costs a request at most ~0.3 s, not an error. Not
        # after a timeout (the library default retries those too): a Redis that stopped
        # answering would then hold a request three times REDIS_SOCKET_TIMEOUT.
        retry=Retry(
            ExponentialWithJitterBackoff(base=0.05, cap=0.25),
            retries=2,
            supported_errors=(RedisConnectionError,),
        ),
        health_check_interval=30,
        # Given its version, redis-py does not look it up in the package metadata (blocking
        # file reads on the event loop) for every new connection.
        driver_info=DriverInfo(lib_version=redis.__version__),
    )
    parts = urlsplit(url)
    async with lifecycle(
        "redis",
        verify=partial(ping, client),
        close=client.aclose,
        deadline=deadline,
        close_timeout=settings.shutdown_timeout,
        target={
            "host": parts.hostname,
            "port": parts.port or 6379,
            "db": parts.path.strip("/") or "0",
        },
    ):
        yield client
