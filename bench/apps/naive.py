"""The per-request-connection pattern many tutorials show: every request opens a fresh asyncpg
connection, a fresh Redis client and a fresh httpx client, uses them once and closes them.

Each resource's readiness check alone (the service's response shape), the construction of an
httpx client alone, and the benchmark route. Configured by BENCH_PG_DSN, BENCH_REDIS_URL and
BENCH_UPSTREAM_URL.
"""

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


async def _timed(check: Awaitable[object]) -> ResourceHealth:
    started = time.perf_counter()
    await check
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    return ResourceHealth(status="ok", latency_ms=latency_ms, age_ms=0)


# Each resource's naive check alone: the service's /health/ready (all of its checks) is compared
# with each, so that no row mixes one resource's cost into another's.
@app.get("/health/ready/postgres")
async def ready_postgres() -> Readiness:
    return Readiness(status="ok", resources={"postgres": await _timed(_select_one())})


@app.get("/health/ready/redis")
async def ready_redis() -> Readiness:
    return Readiness(status="ok", resources={"redis": await _timed(_redis_ping())})


# The service only checks that its shared client is open; a naive check would build one. What
# that costs (an SSL context each time) is its own row, not part of a readiness comparison.
@app.get("/bench/httpx-client")
async def build_client() -> dict[str, bool]:
    async with httpx.AsyncClient(base_url=UPSTREAM_URL) as client:
        return {"closed": client.is_closed}


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
