{%- set any_resource = cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_http_client
    or cookiecutter.use_opentelemetry or cookiecutter.use_rabbitmq -%}
"""The lifespan: open the shared resources in order, hand them to requests, close them again."""

{% if any_resource -%}
import asyncio
{% endif -%}
import gc
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
{%- if cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_http_client %}
from functools import partial
{%- endif %}
from typing import TypedDict

{% if cookiecutter.use_http_client -%}
import httpx
{% endif -%}
import structlog
from fastapi import FastAPI
{%- if cookiecutter.use_opentelemetry %}
from opentelemetry.sdk.trace import TracerProvider
{%- endif %}
from prometheus_client import CollectorRegistry
{%- if cookiecutter.use_redis %}
from redis.asyncio import Redis
{%- endif %}
{%- if cookiecutter.use_postgres %}
from sqlalchemy.ext.asyncio import AsyncEngine
{%- endif %}

from {{ cookiecutter.package_name }}.background import Supervisor, supervise_background
{%- if cookiecutter.use_rabbitmq %}
from {{ cookiecutter.package_name }}.messages import IdempotentHandler, {{ "RedisHandledIds" if cookiecutter.use_redis else "MemoryHandledIds" }}
{%- endif %}
from {{ cookiecutter.package_name }}.metrics import expose_metrics
{%- if cookiecutter.use_postgres and cookiecutter.use_rabbitmq %}
from {{ cookiecutter.package_name }}.outbox import Outbox, run_outbox_relay
{%- endif %}
from {{ cookiecutter.package_name }}.readiness import SharedChecks, shared_checks
{% if cookiecutter.use_auth -%}
from {{ cookiecutter.package_name }}.resources.auth_keys import AuthKeys, open_auth_keys
{% endif -%}
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
{% if cookiecutter.use_rabbitmq -%}
from {{ cookiecutter.package_name }}.resources.rabbitmq import RabbitMQ, consume, open_rabbitmq
{% endif -%}
{% if cookiecutter.use_redis -%}
from {{ cookiecutter.package_name }}.resources.redis import connection_counts as redis_connections
from {{ cookiecutter.package_name }}.resources.redis import open_redis
{% endif -%}
{% if cookiecutter.use_postgres -%}
from {{ cookiecutter.package_name }}.resources.schema import SchemaCheck, schema_check
{% endif -%}
{% if cookiecutter.use_opentelemetry -%}
from {{ cookiecutter.package_name }}.resources.tracing import (
    export_spans,
{%- if cookiecutter.use_http_client %}
    trace_http_client,
{%- endif %}
{%- if cookiecutter.use_postgres %}
    trace_postgres,
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
    trace_rabbitmq,
{%- endif %}
{%- if cookiecutter.use_redis %}
    trace_redis,
{%- endif %}
)
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
    background: Supervisor
{%- if cookiecutter.use_postgres %}
    postgres: AsyncEngine
    # What readiness compares the database with; None with DB_SCHEMA_CHECK=false.
    postgres_schema: SchemaCheck | None
{%- endif %}
{%- if cookiecutter.use_redis %}
    redis: Redis
{%- endif %}
{%- if cookiecutter.use_http_client %}
    http_client: httpx.AsyncClient
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
    rabbitmq: RabbitMQ
{%- endif %}
{%- if cookiecutter.use_auth %}
    auth_keys: AuthKeys
{%- endif %}
{%- if cookiecutter.use_postgres and cookiecutter.use_rabbitmq %}
    # Where routes write the events their transaction publishes (outbox.py).
    outbox: Outbox
{%- endif %}
{%- if cookiecutter.use_opentelemetry %}
    tracer_provider: TracerProvider
{%- endif %}


@contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """Move every object alive now (the imports, the app, the open resources: all of them live
    as long as the process) out of the garbage collector's way until the lifespan ends.

    Objects that requests create while they wait for a round trip outlive the young collections
    and reach the oldest generation, which Python then collects often; each full collection
    walked these ~100k startup objects too, pausing every request in flight for tens of
    milliseconds: the p99 of a Redis GET under load was 18 times its median. Frozen, they are
    skipped, and a full collection takes well under a millisecond (see the benchmark's tails).
    """
    gc.freeze()
    try:
        yield
    finally:
        # A process that runs more lifespans (the tests) gets its objects collectable again.
        gc.unfreeze()


@asynccontextmanager
{%- if cookiecutter.use_opentelemetry %}
async def lifespan(
    app: FastAPI, settings: Settings, tracer_provider: TracerProvider
) -> AsyncIterator[State]:
{%- else %}
async def lifespan(app: FastAPI, settings: Settings) -> AsyncIterator[State]:
{%- endif %}
    started = time.perf_counter()
{%- if any_resource %}
    deadline = asyncio.get_running_loop().time() + settings.startup_timeout
{%- endif %}
    # The exit stack closes whatever opened, in reverse order, also when a later one fails.
    async with AsyncExitStack() as stack:
{%- if cookiecutter.use_opentelemetry %}
        # First in, so last out: the spans of the last requests and of every other close are
        # exported before it closes.
        await stack.enter_async_context(export_spans(tracer_provider, settings, deadline))
{%- endif %}
        shutdown = await stack.enter_async_context(drain_on_sigterm(settings.drain_seconds))
{%- if cookiecutter.use_postgres %}
        postgres_schema = await schema_check(settings)
        postgres = await stack.enter_async_context(open_postgres(settings, deadline))
{%- endif %}
{%- if cookiecutter.use_redis %}
        redis = await stack.enter_async_context(open_redis(settings, deadline))
{%- endif %}
{%- if cookiecutter.use_http_client %}
        http_client = await stack.enter_async_context(open_http_client(settings, deadline))
{%- endif %}
{%- if cookiecutter.use_auth %}
        auth_keys = await stack.enter_async_context(open_auth_keys(settings, http_client, deadline))
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
        rabbitmq = await stack.enter_async_context(open_rabbitmq(settings, deadline))
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
{%- if cookiecutter.use_opentelemetry %}
            "tracer_provider": tracer_provider,
{%- endif %}
            "settings": settings,
            "shutdown": shutdown,
{%- if cookiecutter.use_postgres %}
            "postgres": postgres,
            "postgres_schema": postgres_schema,
{%- endif %}
{%- if cookiecutter.use_redis %}
            "redis": redis,
{%- endif %}
{%- if cookiecutter.use_http_client %}
            "http_client": http_client,
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
            "rabbitmq": rabbitmq,
{%- endif %}
{%- if cookiecutter.use_auth %}
            "auth_keys": auth_keys,
{%- endif %}
            "metrics": metrics,
{%- if cookiecutter.use_postgres and cookiecutter.use_rabbitmq %}
            # After PostgreSQL and RabbitMQ, so that it stops before they close: its pass in
            # progress is rolled back, its events left pending for the next relay.
            "outbox": await stack.enter_async_context(run_outbox_relay(settings, rabbitmq)),
{%- endif %}
            # After the resources, so that it exits before them: the tasks still running use
            # them while they drain.
            "background": await stack.enter_async_context(supervise_background(settings)),
            # Last in, so first out: no check still runs on a resource that is closing.
            "readiness_checks": await stack.enter_async_context(shared_checks(settings)),
        }
{%- if cookiecutter.use_opentelemetry and (cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_http_client or cookiecutter.use_rabbitmq) %}
        # Traced from here on: the startup checks are no request's work.
{%- endif %}
{%- if cookiecutter.use_opentelemetry and cookiecutter.use_postgres %}
        trace_postgres(state["postgres"], tracer_provider)
{%- endif %}
{%- if cookiecutter.use_opentelemetry and cookiecutter.use_redis %}
        trace_redis(state["redis"], tracer_provider)
{%- endif %}
{%- if cookiecutter.use_opentelemetry and cookiecutter.use_http_client %}
        trace_http_client(state["http_client"], tracer_provider)
{%- endif %}
{%- if cookiecutter.use_opentelemetry and cookiecutter.use_rabbitmq %}
        trace_rabbitmq(state["rabbitmq"], tracer_provider)
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
        # Consuming from here on, and stopped first: its handlers finish (or are cancelled,
        # their messages requeued) before the resources they use close.
{%- if cookiecutter.use_redis %}
        handled = RedisHandledIds(
            redis, settings.redis_key_prefix, settings.rabbitmq_handler_timeout
        )
{%- else %}
        handled = MemoryHandledIds()
{%- endif %}
        await stack.enter_async_context(consume(rabbitmq, IdempotentHandler(handled)))
{%- endif %}
        stack.enter_context(startup_objects_frozen())
        log.info("lifespan.started", duration_ms=elapsed_ms(started), pid=os.getpid())
        yield state
        log.info("lifespan.stopping")
    log.info("lifespan.stopped")
