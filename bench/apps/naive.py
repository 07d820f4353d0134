"""The per-request-connection pattern many tutorials show: every request opens a fresh asyncpg
connection, a fresh Redis client and a fresh httpx client, uses them once and closes them.

Same routes and response shapes as the service's /health/ready and the benchmark route.
Configured by BENCH_PG_DSN, BENCH_REDIS_URL and BENCH_UPSTREAM_URL.
"""

import asyncio
import os
import time
from collections.abc import Awaitable

import asyncpg
import httpx
from fastapi import FastAPI, HTTPException

# The service's own response models: the same JSON, so only the connection handling differs.
from my_service.api.health import Readiness, ResourceHealth
from pydantic import BaseModel
from redis.asyncio import Redis
from seeded import CACHE_KEY

PG_DSN = os.environ["BENCH_PG_DSN"]
REDIS_URL = os.environ["BENCH_REDIS_URL"]
UPSTREAM_URL = os.environ["BENCH_UPSTREAM_URL"]

app = FastAPI()


class Combined(BaseModel):
    db: int
    cache: str
    upstream: int


async def _select_one() -> int:
    connection = await asyncpg.connect(PG_DSN)
    try:
        return int(await connection.fetchval("SELECT 1"))
    finally:
        await connection.close()


async def _redis_ping() -> None:
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _http_client_check() -> None:
    # The service only checks that its shared client is open; the naive app makes one.
    async with httpx.AsyncClient(base_url=UPSTREAM_URL):
        pass


async def _timed(check: Awaitable[object]) -> ResourceHealth:
    started = time.perf_counter()
    await check
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    return ResourceHealth(status="ok", latency_ms=latency_ms, age_ms=0)


@app.get("/health/ready")
async def ready() -> Readiness:
    postgres, redis, http_client = await asyncio.gather(
        _timed(_select_one()), _timed(_redis_ping()), _timed(_http_client_check())
    )
    return Readiness(
        status="ok", resources={"postgres": postgres, "redis": redis, "http_client": http_client}
    )


@app.get("/bench/combined")
async def combined() -> Combined:
    one = await _select_one()
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        value = await client.get(CACHE_KEY)
    finally:
        await client.aclose()
    if not isinstance(value, str):
        raise HTTPException(500, "the benchmark key is missing")
    async with httpx.AsyncClient(base_url=UPSTREAM_URL) as http:
        reply = await http.get("/ping")
    return Combined(db=one, cache=value, upstream=reply.status_code)
