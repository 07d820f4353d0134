{%- set any_resource = cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_http_client -%}
"""The lifespan: open the shared resources in order, hand them to requests, close them again."""

{% if any_resource -%}
import asyncio
{% endif -%}
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
{%- if any_resource %}
from functools import partial
{%- endif %}
from typing import TypedDict

{% if cookiecutter.use_http_client -%}
import httpx
{% endif -%}
import structlog
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
{%- if cookiecutter.use_redis %}
from redis.asyncio import Redis
{%- endif %}
{%- if cookiecutter.use_postgres %}
from sqlalchemy.ext.asyncio import AsyncEngine
{%- endif %}

from {{ cookiecutter.package_name }}.metrics import expose_metrics
from {{ cookiecutter.package_name }}.readiness import SharedChecks, shared_checks
{% if cookiecutter.use_http_client -%}
from {{ cookiecutter.package_name }}.resources.http_client import (
    connection_counts as http_client_connections,
)
from {{ cookiecutter.package_name }}.resources.http_client import open_http_client
{% endif -%}
{% if cookiecutter.use_postgres -%}
from {{ cookiecutter.package_name }}.resources.postgres import (
    connection_counts as postgres_connections,
)
from {{ cookiecutter.package_name }}.resources.postgres import open_postgres
{% endif -%}
{% if cookiecutter.use_redis -%}
from {{ cookiecutter.package_name }}.resources.redis import connection_counts as redis_connections
from {{ cookiecutter.package_name }}.resources.redis import open_redis
{% endif -%}
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.shutdown import ShutdownState, drain_on_sigterm
from {{ cookiecutter.package_name }}.timing import elapsed_ms

log = structlog.get_logger(__name__)


class State(TypedDict):
    """What the lifespan hands over: Starlette copies it into every `request.state`."""

    settings: Settings
    shutdown: ShutdownState
    readiness_checks: SharedChecks
    # What GET /metrics renders.
    metrics: CollectorRegistry
{%- if cookiecutter.use_postgres %}
    postgres: AsyncEngine
{%- endif %}
{%- if cookiecutter.use_redis %}
    redis: Redis
{%- endif %}
{%- if cookiecutter.use_http_client %}
    http_client: httpx.AsyncClient
{%- endif %}


@asynccontextmanager
async def lifespan(app: FastAPI, settings: Settings) -> AsyncIterator[State]:
    started = time.perf_counter()
{%- if any_resource %}
    deadline = asyncio.get_running_loop().time() + settings.startup_timeout
{%- endif %}
    # The exit stack closes whatever opened, in reverse order, also when a later one fails.
    async with AsyncExitStack() as stack:
        shutdown = await stack.enter_async_context(drain_on_sigterm(settings.drain_seconds))
{%- if cookiecutter.use_postgres %}
        postgres = await stack.enter_async_context(open_postgres(settings, deadline))
{%- endif %}
{%- if cookiecutter.use_redis %}
        redis = await stack.enter_async_context(open_redis(settings, deadline))
{%- endif %}
{%- if cookiecutter.use_http_client %}
        http_client = await stack.enter_async_context(open_http_client(settings, deadline))
{%- endif %}
        metrics = await stack.enter_async_context(
            expose_metrics(
                settings,
{%- if cookiecutter.use_postgres or cookiecutter.use_redis %}
                db_pools={
{%- if cookiecutter.use_postgres %}
                    "postgres": partial(postgres_connections, postgres),
{%- endif %}
{%- if cookiecutter.use_redis %}
                    "redis": partial(redis_connections, redis),
{%- endif %}
                },
{%- else %}
                db_pools={},
{%- endif %}
{%- if cookiecutter.use_http_client %}
                http_pools={"http_client": partial(http_client_connections, http_client)},
{%- else %}
                http_pools={},
{%- endif %}
            )
        )
        state: State = {
            "settings": settings,
            "shutdown": shutdown,
{%- if cookiecutter.use_postgres %}
            "postgres": postgres,
{%- endif %}
{%- if cookiecutter.use_redis %}
            "redis": redis,
{%- endif %}
{%- if cookiecutter.use_http_client %}
            "http_client": http_client,
{%- endif %}
            "metrics": metrics,
            # Last in, so first out: no check still runs on a resource that is closing.
            "readiness_checks": await stack.enter_async_context(shared_checks(settings)),
        }
        log.info("lifespan.started", duration_ms=elapsed_ms(started), pid=os.getpid())
        yield state
        log.info("lifespan.stopping")
    log.info("lifespan.stopped")
