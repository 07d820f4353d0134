"""Tracing against a local OTLP/HTTP receiver: one trace per request with the resources' client
spans under its server span, the trace carried in `traceparent` both ways, trace ids in the log
lines, nothing lost at SIGTERM, and a collector's outage costing the requests nothing."""

{% if cookiecutter.use_http_client -%}
import json
{% endif -%}
import logging
import re
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.dependencies import AppTracer
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import auth_headers, serve
from tests.otlp import OtlpReceiver, Span, children_of, otlp_receiver
from tests.processes import finish, json_lines, running, url, wait_until_ready
{%- if cookiecutter.use_rabbitmq %}
from tests.servers import async_wait_until, free_port, silent_server, timed
{%- else %}
from tests.servers import free_port, silent_server, timed
{%- endif %}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    body: dict[str, str] | None
    template: str  # what the server span is named after
    status: int
    # The instrumentation whose client spans the request must have, if any.
    client: str | None


ROUTES = [
    Route("GET", "/health/live", None, "/health/live", 200, None),
{%- if cookiecutter.use_postgres %}
    Route("POST", "/notes", {"text": "traced"}, "/notes", 201, "sqlalchemy"),
{%- endif %}
{%- if cookiecutter.use_redis %}
    Route("PUT", "/cache/traced", {"value": "v"}, "/cache/{key}", 200, "redis"),
{%- endif %}
{%- if cookiecutter.use_http_client %}
    Route("GET", "/upstream/echo", None, "/upstream/{path:path}", 200, "httpx"),
{%- endif %}
]
ROUTE_IDS = [f"{route.method} {route.path}" for route in ROUTES]
# The route that touches the most (a resource, where there is one).
BUSIEST = ROUTES[-1]


def instrumentation(span: Span) -> str:
    return span.scope.removeprefix("opentelemetry.instrumentation.")


def server_span(spans: list[Span], route: Route) -> Span:
    (span,) = [
        span
        for span in spans
        if span.kind == "server" and span.name == f"{route.method} {route.template}"
    ]
    return span


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    """A receiver of the test's own: the apps created in the test export to it."""
    with otlp_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        yield receiver


async def serve_requests(
    settings: Settings, routes: list[Route], headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    """Serve a new app, send it one request per route, and stop it (which flushes its spans)."""
    async with serve(create_app(settings)) as client:
        return [
            await client.request(route.method, route.path, json=route.body, headers=headers)
            for route in routes
        ]


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
async def test_a_request_is_one_trace_whose_server_span_parents_its_client_spans(
    route: Route, make_settings: Callable[..., Settings], receiver: OtlpReceiver
) -> None:
    (response,) = await serve_requests(make_settings(), [route])

    assert response.status_code == route.status
    # Read as soon as the lifespan has stopped: closing the provider sent everything.
{%- if cookiecutter.use_postgres and cookiecutter.use_rabbitmq %}
    # Less the outbox relay's publish of POST /notes's event and its handling: a trace of
    # their own (docs/messages.md).
    spans = [span for span in receiver.spans() if span.kind not in {"producer", "consumer"}]
{%- else %}
    spans = receiver.spans()
{%- endif %}
    server = server_span(spans, route)
    assert server.parent_span_id is None
    assert server.service_name == "{{ cookiecutter.project_slug }}"
    assert {span.trace_id for span in spans} == {server.trace_id}
    clients = [span for span in spans if span != server]
    assert clients == children_of(server, spans)
    assert {span.kind for span in clients} <= {"client"}
    expected = {route.client} if route.client else set()
    assert {instrumentation(span) for span in clients} == expected


async def test_an_incoming_traceparent_is_continued(
    make_settings: Callable[..., Settings], receiver: OtlpReceiver
) -> None:
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    traceparent = {"traceparent": f"00-{trace_id}-{parent_id}-01"}

    (response,) = await serve_requests(make_settings(), [BUSIEST], headers=traceparent)

    assert response.status_code == BUSIEST.status
    spans = receiver.spans()
    server = server_span(spans, BUSIEST)
    assert (server.trace_id, server.parent_span_id) == (trace_id, parent_id)
    assert {span.trace_id for span in spans} == {trace_id}
{%- if cookiecutter.use_http_client %}


async def test_the_upstream_gets_the_trace_in_traceparent(
    make_settings: Callable[..., Settings], receiver: OtlpReceiver
) -> None:
    (response,) = await serve_requests(make_settings(), [BUSIEST])

    # The upstream echoes the headers it received.
    received = json.loads(response.json()["body"])["headers"]
    version, trace_id, parent_id, flags = received["traceparent"].split("-")
    spans = receiver.spans()
    (call,) = [span for span in spans if instrumentation(span) == "httpx"]
    assert (version, trace_id, parent_id) == ("00", call.trace_id, call.span_id)
    assert int(flags, 16) & 1  # sampled
    assert call.parent_span_id == server_span(spans, BUSIEST).span_id
{%- endif %}


async def test_every_app_traces_with_a_provider_of_its_own(
    make_settings: Callable[..., Settings], receiver: OtlpReceiver
) -> None:
    # OpenTelemetry's process-wide provider can be set only once: an app that used it would
    # leave the next app in the process (here the second one) exporting to a closed provider.
    for _ in range(2):
        (response,) = await serve_requests(make_settings(), [BUSIEST])
        assert response.status_code == BUSIEST.status

    spans = receiver.spans()
    servers = [span for span in spans if span.kind == "server"]
    assert len(servers) == 2
    for server in servers:
        assert bool(children_of(server, spans)) == (BUSIEST.client is not None)
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


async def test_a_route_adds_spans_of_its_own_with_app_tracer(
    make_settings: Callable[..., Settings], receiver: OtlpReceiver
) -> None:
    app = create_app(make_settings())

    @app.get("/test/own-span")
    async def own_span(tracer: AppTracer) -> dict[str, str]:
        with tracer.start_as_current_span("own work"):
            return {"status": "ok"}

    async with serve(app) as client:
        response = await client.get("/test/own-span")

    assert response.status_code == 200
    spans = receiver.spans()
    (own,) = [span for span in spans if span.name == "own work"]
    (server,) = [span for span in spans if span.kind == "server"]
    assert (own.parent_span_id, own.scope) == (server.span_id, "{{ cookiecutter.package_name }}")


{%- if cookiecutter.use_rabbitmq %}


async def test_a_message_is_handled_in_the_trace_of_the_request_that_published_it(
    make_settings: Callable[..., Settings], receiver: OtlpReceiver, events: list[EventDict]
) -> None:
    async with serve(create_app(make_settings())) as client:
        response = await client.post("/messages", json={"text": "traced"})
        message_id = response.json()["message_id"]

        async def handled() -> bool:
            return any(e["event"] == "message.handled" for e in events)

        await async_wait_until(handled, within=10, message="the message was never handled")

    assert response.status_code == 202
    spans = receiver.spans()
    (server,) = [span for span in spans if span.kind == "server"]
    (publish,) = [span for span in spans if span.kind == "producer"]
    (process,) = [span for span in spans if span.kind == "consumer"]
    assert publish.parent_span_id == server.span_id
    assert (process.trace_id, process.parent_span_id) == (server.trace_id, publish.span_id)
    assert process.attributes["messaging.message.id"] == message_id
    assert publish.attributes["messaging.system"] == "rabbitmq"
{%- endif %}


def unreachable_collector(kind: str) -> AbstractContextManager[int]:
    """A port where nothing listens, or one that accepts connections and never answers."""
    return nullcontext(free_port()) if kind == "refusing" else silent_server()


@pytest.mark.parametrize("kind", ["refusing", "silent"])
async def test_an_unreachable_collector_costs_the_requests_nothing(
    kind: str,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    events: list[EventDict],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Exports start while the requests run, and each gives up after a second.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    with unreachable_collector(kind) as port:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        async with serve(create_app(make_settings())) as client:
            for _ in range(3):
                for route in ROUTES:
                    request = client.request(route.method, route.path, json=route.body)
                    response, seconds = await timed(request)
                    assert response.status_code == route.status
                    # An export in the request's path would wait for the silent collector.
                    assert seconds < 0.5

    closed = [e for e in events if e["event"].startswith("resource.clos")]
    assert ("tracing", "resource.closed") in [(e["resource"], e["event"]) for e in closed]
    exporter_errors = [r for r in caplog.records if r.name.startswith("opentelemetry.exporter")]
    assert exporter_errors, "the exporter never tried: the test proves nothing"
    # Every attempt failed on the SDK's export thread, none in the event loop serving requests.
    assert threading.get_ident() not in {record.thread for record in exporter_errors}


@pytest.mark.parametrize(
    "switch", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_SAMPLER": "always_off"}]
)
async def test_the_environment_switches_tracing_off(
    switch: dict[str, str],
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    receiver: OtlpReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for variable, value in switch.items():
        monkeypatch.setenv(variable, value)

    responses = await serve_requests(make_settings(), ROUTES)

    assert [response.status_code for response in responses] == [route.status for route in ROUTES]
    assert receiver.spans() == []
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_the_last_requests_spans_arrive_after_sigterm_and_their_log_lines_carry_the_trace(
    service_env: dict[str, str], tmp_path: Path, receiver: OtlpReceiver
) -> None:
    service_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    # No export on a schedule while the test runs: only the flush at shutdown can send them.
    service_env["OTEL_BSP_SCHEDULE_DELAY"] = "600000"
    service_env["PROBE_LOG_LEVEL"] = "INFO"  # for the request line of /health/live
    with (
        running("python -m", service_env, tmp_path) as service,
        httpx.Client(headers=auth_headers()) as client,
    ):
        wait_until_ready(service, service_env["PORT"])
        responses = [
            client.request(route.method, url(service_env, route.path), json=route.body)
            for route in ROUTES
        ]
        service.process.send_signal(signal.SIGTERM)
        returncode, stdout, stderr = finish(service)

    assert returncode == 0, stderr
    assert [response.status_code for response in responses] == [route.status for route in ROUTES]

    def every_route_traced(spans: list[Span]) -> bool:
        names = {span.name for span in spans if span.kind == "server"}
        return {f"{route.method} {route.template}" for route in ROUTES} <= names

    spans = receiver.wait_for_spans(
        every_route_traced, timeout=10, message="the spans of the last requests never arrived"
    )
    lines = json_lines(stdout)
    for route in ROUTES:
        server = server_span(spans, route)
        (line,) = [
            line for line in lines if line["event"] == "http.request" and line["path"] == route.path
        ]
        assert (line["trace_id"], line["span_id"]) == (server.trace_id, server.span_id)
        assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"])
        assert re.fullmatch(r"[0-9a-f]{16}", line["span_id"])
    # Lines written outside any span carry no ids.
    outside: list[dict[str, Any]] = [
        line for line in lines if line["event"] in {"resource.opened", "lifespan.started"}
    ]
    assert outside
    assert [line for line in outside if "trace_id" in line] == []
    closed = [line["resource"] for line in lines if line["event"] == "resource.closed"]
    assert closed[-1] == "tracing"
