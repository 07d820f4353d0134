"""Liveness says the process serves requests; readiness says its resources answer right now."""

import time
{%- if cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_http_client %}
from functools import partial
{%- endif %}
from typing import Literal, Self

from fastapi import APIRouter, Response, status
from pydantic import BaseModel
{%- set dependencies = (["HttpClient"] if cookiecutter.use_http_client else [])
    + (["Postgres", "PostgresSchema"] if cookiecutter.use_postgres else [])
    + (["RabbitMQClient"] if cookiecutter.use_rabbitmq else [])
    + ["ReadinessChecks"]
    + (["RedisClient"] if cookiecutter.use_redis else [])
    + ["Shutdown"] %}

from {{ cookiecutter.package_name }}.dependencies import (
{%- for name in dependencies %}
    {{ name }},
{%- endfor %}
)
from {{ cookiecutter.package_name }}.readiness import CheckResult, Ping
{%- if cookiecutter.use_http_client %}
from {{ cookiecutter.package_name }}.resources.http_client import ping as ping_http_client
{%- endif %}
{%- if cookiecutter.use_postgres %}
from {{ cookiecutter.package_name }}.resources.postgres import ping as ping_postgres
{%- endif %}
{%- if cookiecutter.use_redis %}
from {{ cookiecutter.package_name }}.resources.redis import ping as ping_redis
{%- endif %}

router = APIRouter(prefix="/health", tags=["health"])

Status = Literal["ok", "unavailable"]


class Liveness(BaseModel):
    status: Literal["ok"]


class ResourceHealth(BaseModel):
    status: Status
    latency_ms: float
    # How long ago the check finished: concurrent probes share one check, and a result is
    # reused for READINESS_CACHE_SECONDS.
    age_ms: float
    error: str | None = None

    @classmethod
    def of(cls, result: CheckResult, now: float) -> Self:
        return cls(
            status="ok" if result.ok else "unavailable",
            latency_ms=result.latency_ms,
            age_ms=round(max(0.0, now - result.finished_at) * 1000, 2),
            error=result.error,
        )


class Readiness(BaseModel):
    # "draining": the process got SIGTERM and asks for no new requests.
    status: Literal["ok", "unavailable", "draining"]
    resources: dict[str, ResourceHealth]


@router.get("/live")
async def live() -> Liveness:
    return Liveness(status="ok")


@router.get(
    "/ready",
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": Readiness}},
)
async def ready(
    response: Response,
    checks: ReadinessChecks,
    shutdown: Shutdown,
{%- if cookiecutter.use_postgres %}
    postgres: Postgres,
    postgres_schema: PostgresSchema,
{%- endif %}
{%- if cookiecutter.use_redis %}
    redis: RedisClient,
{%- endif %}
{%- if cookiecutter.use_http_client %}
    http_client: HttpClient,
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
    rabbitmq: RabbitMQClient,
{%- endif %}
) -> Readiness:
    if shutdown.draining:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(status="draining", resources={})
{%- if cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_http_client or cookiecutter.use_rabbitmq %}
    pings: dict[str, Ping] = {
{%- if cookiecutter.use_postgres %}
        "postgres": partial(ping_postgres, postgres, postgres_schema),
{%- endif %}
{%- if cookiecutter.use_redis %}
        "redis": partial(ping_redis, redis),
{%- endif %}
{%- if cookiecutter.use_http_client %}
        "http_client": partial(ping_http_client, http_client),
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
        "rabbitmq": rabbitmq.ping,
{%- endif %}
    }
{%- else %}
    pings: dict[str, Ping] = {}
{%- endif %}
    results = await checks.check_all(pings)
    now = time.monotonic()
    resources = {name: ResourceHealth.of(result, now) for name, result in results.items()}
    healthy = all(result.ok for result in results.values())
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(status="ok" if healthy else "unavailable", resources=resources)
