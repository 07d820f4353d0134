"""Typed dependencies that hand routes what the lifespan opened (via `request.state`).

The accessors are `async def` although they never await: FastAPI runs a plain `def` dependency
in a worker thread, a round trip through the thread pool on every request.
"""

{% if cookiecutter.use_postgres -%}
from collections.abc import AsyncIterator
{% endif -%}
from typing import Annotated, cast

{% if cookiecutter.use_http_client -%}
import httpx
{% endif -%}
from fastapi import Depends, Request
{%- if cookiecutter.use_opentelemetry %}
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
{%- endif %}
from prometheus_client import CollectorRegistry
{%- if cookiecutter.use_redis %}
from redis.asyncio import Redis
{%- endif %}
{%- if cookiecutter.use_postgres %}
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
{%- endif %}

from {{ cookiecutter.package_name }}.background import Supervisor
{% if cookiecutter.use_postgres and cookiecutter.use_rabbitmq -%}
from {{ cookiecutter.package_name }}.outbox import Outbox as OutboxWriter
{% endif -%}
from {{ cookiecutter.package_name }}.readiness import SharedChecks
{% if cookiecutter.use_postgres -%}
from {{ cookiecutter.package_name }}.resources.lifecycle import ResourceUnavailableError, describe
{% endif -%}
{% if cookiecutter.use_postgres -%}
from {{ cookiecutter.package_name }}.resources.postgres import is_outage as is_postgres_outage
{% endif -%}
{% if cookiecutter.use_rabbitmq -%}
from {{ cookiecutter.package_name }}.resources.rabbitmq import RabbitMQ
{% endif -%}
{% if cookiecutter.use_postgres -%}
from {{ cookiecutter.package_name }}.resources.schema import SchemaCheck
{% endif -%}

from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.shutdown import ShutdownState


async def _settings(request: Request) -> Settings:
    return cast(Settings, request.state.settings)


AppSettings = Annotated[Settings, Depends(_settings)]


async def _shutdown(request: Request) -> ShutdownState:
    return cast(ShutdownState, request.state.shutdown)


Shutdown = Annotated[ShutdownState, Depends(_shutdown)]


async def _readiness_checks(request: Request) -> SharedChecks:
    return cast(SharedChecks, request.state.readiness_checks)


ReadinessChecks = Annotated[SharedChecks, Depends(_readiness_checks)]


async def _metrics_registry(request: Request) -> CollectorRegistry:
    return cast(CollectorRegistry, request.state.metrics)


MetricsRegistry = Annotated[CollectorRegistry, Depends(_metrics_registry)]


async def _background(request: Request) -> Supervisor:
    return cast(Supervisor, request.state.background)


# Spawns work that goes on after the response (background.py).
Background = Annotated[Supervisor, Depends(_background)]
{%- if cookiecutter.use_postgres %}


async def _postgres(request: Request) -> AsyncEngine:
    return cast(AsyncEngine, request.state.postgres)


Postgres = Annotated[AsyncEngine, Depends(_postgres)]


async def _postgres_schema(request: Request) -> SchemaCheck | None:
    return cast(SchemaCheck | None, request.state.postgres_schema)


PostgresSchema = Annotated[SchemaCheck | None, Depends(_postgres_schema)]


async def _db_session(engine: Postgres) -> AsyncIterator[AsyncSession]:
    # Closing the session rolls back whatever was not committed, so a handler that raises
    # leaves nothing behind.
    async with AsyncSession(engine, expire_on_commit=False) as session:
        try:
            yield session
            await session.commit()
        except Exception as exc:
            if is_postgres_outage(exc):
                raise ResourceUnavailableError("postgres", describe(exc)) from exc
            raise


# scope="function" commits when the handler returns and before the response is sent: a failed
# commit becomes a 500, never a 2xx the client already has.
DbSession = Annotated[AsyncSession, Depends(_db_session, scope="function")]
{%- endif %}
{%- if cookiecutter.use_redis %}


async def _redis(request: Request) -> Redis:
    return cast(Redis, request.state.redis)


RedisClient = Annotated[Redis, Depends(_redis)]
{%- endif %}
{%- if cookiecutter.use_http_client %}


async def _http_client(request: Request) -> httpx.AsyncClient:
    return cast(httpx.AsyncClient, request.state.http_client)


HttpClient = Annotated[httpx.AsyncClient, Depends(_http_client)]
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}


async def _rabbitmq(request: Request) -> RabbitMQ:
    return cast(RabbitMQ, request.state.rabbitmq)


RabbitMQClient = Annotated[RabbitMQ, Depends(_rabbitmq)]
{%- endif %}
{%- if cookiecutter.use_postgres and cookiecutter.use_rabbitmq %}


async def _outbox(request: Request) -> OutboxWriter:
    return cast(OutboxWriter, request.state.outbox)


# Events added to a DbSession's transaction, published once it commits (outbox.py).
Outbox = Annotated[OutboxWriter, Depends(_outbox)]
{%- endif %}
{%- if cookiecutter.use_opentelemetry %}


async def _tracer(request: Request) -> Tracer:
    provider = cast(TracerProvider, request.state.tracer_provider)
    return provider.get_tracer("{{ cookiecutter.package_name }}")


# For spans of a route's own, under its request's span. (opentelemetry.trace.get_tracer() would
# give one that records nothing: the service sets no process-wide provider, see
# docs/observability.md, Tracing.)
AppTracer = Annotated[Tracer, Depends(_tracer)]
{%- endif %}
