"""OpenTelemetry tracing: a tracer provider per app, exporting spans over OTLP/HTTP while the
lifespan runs, and spans for each request, SQL statement, Redis command, outgoing call and
message published or handled.

The SDK reads the standard variables itself: OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, OTEL_SDK_DISABLED,
OTEL_BSP_* (the export queue). Trace context travels in W3C `traceparent` headers.

Nothing here touches OpenTelemetry's process-wide state (`set_tracer_provider`, the
instrumentors' `instrument()`): that can be set once per process, while a process may hold
several apps (the tests create one per test), each with its own provider and lifespan. Every
instrumentation is handed its app's provider instead.
"""

import asyncio
{%- if cookiecutter.use_rabbitmq %}
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
{%- else %}
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
{%- endif %}
from functools import partial
{%- if cookiecutter.use_rabbitmq %}
from typing import Any
{%- endif %}

{% if cookiecutter.use_http_client -%}
import httpx
{% endif -%}
{% if cookiecutter.use_rabbitmq -%}
from aio_pika.abc import AbstractIncomingMessage
{% endif -%}
from fastapi import FastAPI
{%- if cookiecutter.use_rabbitmq %}
from opentelemetry import propagate
{%- endif %}
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
{%- if cookiecutter.use_http_client %}
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
{%- endif %}
{%- if cookiecutter.use_redis %}
from opentelemetry.instrumentation.redis import RedisInstrumentor
{%- endif %}
{%- if cookiecutter.use_postgres %}
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
{%- endif %}
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
{%- if cookiecutter.use_rabbitmq %}
from opentelemetry.trace import Span, SpanKind, Tracer
{%- endif %}
{%- if cookiecutter.use_redis %}
from redis.asyncio import Redis
{%- endif %}
{%- if cookiecutter.use_postgres %}
from sqlalchemy.ext.asyncio import AsyncEngine
{%- endif %}

from {{ cookiecutter.package_name }}.resources.lifecycle import lifecycle
{%- if cookiecutter.use_rabbitmq %}
from {{ cookiecutter.package_name }}.resources.rabbitmq import RabbitMQ
{%- endif %}
from {{ cookiecutter.package_name }}.settings import Settings

# The instrumentations' own metrics would be a second set of metrics, never exported.
_NO_METRICS = NoOpMeterProvider()


def new_tracer_provider() -> TracerProvider:
    """A provider that exports nothing until `export_spans` (the lifespan) starts its export.

    It exists before the lifespan runs because Starlette builds the middleware stack, and with
    it the server-span middleware and its tracer, before it runs the lifespan. Like creating the
    app, creating it leaves nothing open: no export thread, no connection."""
    # The project's name unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) gives another.
    named = Resource.create({SERVICE_NAME: "{{ cookiecutter.project_slug }}"})
    resource = named.merge(OTELResourceDetector().detect())
    # Not shut down by the SDK at exit: the lifespan does it, and the SDK's exit hook would keep
    # every provider ever created (one per app) alive until the process ends.
    return TracerProvider(resource=resource, shutdown_on_exit=False)


def trace_requests(app: FastAPI, tracer_provider: TracerProvider) -> None:
    """A server span around every request, named by its route template (`GET /notes/{note_id}`),
    continuing the trace of an incoming `traceparent`. (The instrumentor also wraps Starlette's
    BackgroundTask for the whole process, once, with the first app's tracer: in a process that
    serves one app, this one.)"""
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=tracer_provider,
        meter_provider=_NO_METRICS,
        # No span per ASGI message (each body chunk sent or received): they would cost more
        # than the request's own spans and say nothing the server span does not.
        exclude_spans=["receive", "send"],
        # A scrape every few seconds is no request of a user's: a trace of its own would say
        # nothing the metrics it serves do not.
        excluded_urls="/metrics$",
    )
{%- if cookiecutter.use_postgres %}


def trace_postgres(engine: AsyncEngine, tracer_provider: TracerProvider) -> None:
    """A client span per SQL statement the engine sends. SQLAlchemy's instrumentation rather
    than asyncpg's: it hooks this engine's events, where asyncpg's patches the driver's classes
    for the whole process (and so every app's engine with the first app's provider)."""
    tracer = tracer_provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    counter = _NO_METRICS.get_meter(__name__).create_up_down_counter("db.client.connections.usage")
    EngineTracer(tracer, engine.sync_engine, counter)  # type: ignore[no-untyped-call]
{%- endif %}
{%- if cookiecutter.use_redis %}


def trace_redis(client: Redis, tracer_provider: TracerProvider) -> None:
    """A client span per Redis command (a pipeline is one span), for this client only."""
    RedisInstrumentor.instrument_client(client, tracer_provider=tracer_provider)
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}


def trace_rabbitmq(rabbitmq: RabbitMQ, tracer_provider: TracerProvider) -> None:
    """A producer span per publish, whose context goes out in the message's `traceparent`
    header, and a consumer span per message handled, in the trace that header names: the
    handling of an event belongs to the trace of the request that published it. By hand: the
    aio-pika instrumentation patches aio-pika's classes for the whole process, with one
    provider (the same reason as for asyncpg above)."""
    rabbitmq.tracing = TracedMessages(tracer_provider.get_tracer(__name__))


class TracedMessages:
    """MessageTracing (resources/rabbitmq.py) with OpenTelemetry's messaging conventions."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    @contextmanager
    def publishing(self, headers: dict[str, Any], exchange: str) -> Iterator[Span]:
        attributes = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send",
            "messaging.destination.name": exchange,
        }
        with self._tracer.start_as_current_span(
            f"publish {exchange}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            propagate.inject(headers)
            yield span

    @contextmanager
    def handling(self, message: AbstractIncomingMessage, queue: str) -> Iterator[Span]:
        carrier = {
            # Any publisher's headers: bytes that are no UTF-8 must not fail the handling.
            name: value.decode(errors="replace") if isinstance(value, bytes) else value
            for name, value in message.headers.items()
            if isinstance(value, str | bytes)
        }
        attributes = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": message.message_id or "",
        }
        with self._tracer.start_as_current_span(
            f"process {queue}",
            context=propagate.extract(carrier),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            yield span
{%- endif %}
{%- if cookiecutter.use_http_client %}


def trace_http_client(client: httpx.AsyncClient, tracer_provider: TracerProvider) -> None:
    """A client span per outgoing call, whose context goes out in a `traceparent` header."""
    HTTPXClientInstrumentor.instrument_client(
        client, tracer_provider=tracer_provider, meter_provider=_NO_METRICS
    )
{%- endif %}


def _flush_and_shut_down(tracer_provider: TracerProvider, timeout: float) -> None:
    tracer_provider.force_flush(timeout_millis=int(timeout * 1000))
    tracer_provider.shutdown()


@asynccontextmanager
async def export_spans(
    tracer_provider: TracerProvider, settings: Settings, deadline: float
) -> AsyncIterator[TracerProvider]:
    """Export the provider's spans for the life of the service; on the way out, send what is
    still queued (the last requests' spans, those of the resources closing before this one)."""
    # Spans are queued and sent by a thread of the SDK's: an exporter that is slow, failing or
    # unreachable costs a request nothing, and spans beyond the queue's limit (OTEL_BSP_*) are
    # dropped rather than held in memory.
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # The SDK's flush and shutdown block until the export thread is done: off the event loop.
    close = partial(
        asyncio.to_thread, _flush_and_shut_down, tracer_provider, settings.shutdown_timeout
    )
    async with lifecycle(
        "tracing",
        verify=None,  # a collector that is down must not stop the service
        close=close,
        deadline=deadline,
        close_timeout=settings.shutdown_timeout,
        target={
            "service_name": tracer_provider.resource.attributes.get(SERVICE_NAME),
            "sampler": tracer_provider.sampler.get_description(),
        },
    ):
        yield tracer_provider
