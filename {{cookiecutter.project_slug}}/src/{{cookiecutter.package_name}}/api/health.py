"""Liveness says the process serves requests; readiness says its resources answer right now."""

import asyncio
import time
from collections.abc import Awaitable, Callable
{%- if cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_http_client %}
from functools import partial
{%- endif %}
from typing import Literal

from fastapi import APIRouter, Response, status
from pydantic import BaseModel
{%- set dependencies = ["AppSettings"]
    + (["HttpClient"] if cookiecutter.use_http_client else [])
    + (["Postgres"] if cookiecutter.use_postgres else [])
    + (["RedisClient"] if cookiecutter.use_redis else [])
    + ["Shutdown"] %}

from {{ cookiecutter.package_name }}.dependencies import {{ dependencies | join(", ") }}
{%- if cookiecutter.use_http_client %}
from {{ cookiecutter.package_name }}.resources.http_client import ping as ping_http_client
{%- endif %}
{%- if cookiecutter.use_postgres %}
from {{ cookiecutter.package_name }}.resources.postgres import ping as ping_postgres
{%- endif %}
{%- if cookiecutter.use_redis %}
from {{ cookiecutter.package_name }}.resources.redis import ping as ping_redis
{%- endif %}
from {{ cookiecutter.package_name }}.timing import elapsed_ms

router = APIRouter(prefix="/health", tags=["health"])

Status = Literal["ok", "unavailable"]


class Liveness(BaseModel):
    status: Literal["ok"]


class ResourceHealth(BaseModel):
    status: Status
    latency_ms: float
    error: str | None = None


class Readiness(BaseModel):
    # "draining": the process got SIGTERM and asks for no new requests.
    status: Literal["ok", "unavailable", "draining"]
    resources: dict[str, ResourceHealth]


@router.get("/live")
async def live() -> Liveness:
    return Liveness(status="ok")


async def _check(ping: Callable[[], Awaitable[None]], limit_seconds: float) -> ResourceHealth:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit_seconds):
            await ping()
    except Exception as exc:
        # The type is enough for an operator; messages can carry internal addresses.
        error = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        return ResourceHealth(status="unavailable", latency_ms=elapsed_ms(started), error=error)
    return ResourceHealth(status="ok", latency_ms=elapsed_ms(started))


@router.get(
    "/ready",
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": Readiness}},
)
async def ready(
    response: Response,
    settings: AppSettings,
    shutdown: Shutdown,
{%- if cookiecutter.use_postgres %}
    postgres: Postgres,
{%- endif %}
{%- if cookiecutter.use_redis %}
    redis: RedisClient,
{%- endif %}
{%- if cookiecutter.use_http_client %}
    http_client: HttpClient,
{%- endif %}
) -> Readiness:
    if shutdown.draining:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(status="draining", resources={})
{%- if cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_http_client %}
    pings: dict[str, Callable[[], Awaitable[None]]] = {
{%- if cookiecutter.use_postgres %}
        "postgres": partial(ping_postgres, postgres),
{%- endif %}
{%- if cookiecutter.use_redis %}
        "redis": partial(ping_redis, redis),
{%- endif %}
{%- if cookiecutter.use_http_client %}
        "http_client": partial(ping_http_client, http_client),
{%- endif %}
    }
{%- else %}
    pings: dict[str, Callable[[], Awaitable[None]]] = {}
{%- endif %}
    results = await asyncio.gather(
        *(_check(ping, settings.readiness_timeout) for ping in pings.values())
    )
    resources = dict(zip(pings, results, strict=True))
    healthy = all(result.status == "ok" for result in resources.values())
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(status="ok" if healthy else "unavailable", resources=resources)
