"""The generated service as `uvicorn <package>.main:app` serves it, plus one benchmark route.

`my_service.main` reads the settings from the environment, configures logging and builds the
app with `create_app`; the route added here uses the service's own `DbSession`, `RedisClient`
and `HttpClient` dependencies, so it runs through the real lifespan and the real middleware.
"""

from fastapi import FastAPI, HTTPException
from my_service import main
from my_service.dependencies import DbSession, HttpClient, RedisClient
from pydantic import BaseModel
from sqlalchemy import text
from seeded import CACHE_KEY

app: FastAPI = main.app


class Combined(BaseModel):
    db: int
    cache: str
    upstream: int


@app.get("/bench/combined")
async def combined(session: DbSession, redis: RedisClient, client: HttpClient) -> Combined:
    """One request that does a round trip to each resource: PostgreSQL, Redis, the upstream."""
    one = (await session.execute(text("SELECT 1"))).scalar_one()
    value = await redis.get(CACHE_KEY)
    if value is None:
        raise HTTPException(500, "the benchmark key is missing")
    reply = await client.get("/ping")
    return Combined(db=one, cache=value, upstream=reply.status_code)


__all__ = ["app"]
