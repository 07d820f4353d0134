"""The practical limit of the benchmark route: the same statements and calls issued by a plain
asyncio loop, with as many concurrent workers as wrk has connections, on the same event loop
(uvloop): a pooled asyncpg connection sending BEGIN, `SELECT 1` and COMMIT (what the service's
`DbSession` sends for the route's one statement), a Redis `GET`, and one HTTP GET to the upstream
with the service's kind of client.

Prints one JSON object: requests, seconds, rps, p50_ms, p99_ms, p999_ms, errors.
"""

import argparse
import asyncio
import json
import time

import asyncpg
import httpx
import uvloop
from redis.asyncio import Redis
from seeded import CACHE_KEY


async def measure(args: argparse.Namespace) -> dict[str, float]:
    # The service's defaults: at most 10 database connections (DB_POOL_SIZE 5 + DB_MAX_OVERFLOW
    # 5, kept open here), 50 Redis connections, httpx limits 100 / 20 keep-alive.
    pool = await asyncpg.create_pool(args.pg_dsn, min_size=args.pool_size, max_size=args.pool_size)
    redis = Redis.from_url(args.redis_url, decode_responses=True, max_connections=50)
    http = httpx.AsyncClient(
        base_url=args.upstream_url,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )

    async def once() -> None:
        async with pool.acquire() as connection, connection.transaction():
            await connection.fetchval("SELECT 1")
        if await redis.get(CACHE_KEY) is None:
            raise RuntimeError("the benchmark key is missing")
        (await http.get("/ping")).raise_for_status()

    latencies: list[float] = []
    errors = 0

    async def worker(stop_at: float) -> None:
        nonlocal errors
        while (started := time.perf_counter()) < stop_at:
            try:
                await once()
            except Exception:
                errors += 1
            else:
                latencies.append(time.perf_counter() - started)

    try:
        # Warm up: open the pools' connections before the clock starts.
        await asyncio.gather(*(once() for _ in range(args.concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + args.duration) for _ in range(args.concurrency)))
        seconds = time.perf_counter() - started
    finally:
        await http.aclose()
        await redis.aclose()
        await pool.close()

    latencies.sort()

    def percentile(fraction: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "seconds": seconds,
        "rps": len(latencies) / seconds,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "p999_ms": percentile(0.999),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pg-dsn", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--upstream-url", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--pool-size", type=int, default=10)
    print(json.dumps(uvloop.run(measure(parser.parse_args()))))


if __name__ == "__main__":
    main()
