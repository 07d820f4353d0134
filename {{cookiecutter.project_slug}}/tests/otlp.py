"""A local OTLP/HTTP receiver, standing in for a collector: it takes what the service's exporter
sends to POST /v1/traces, decodes the protobuf payload and keeps the spans for the test to read."""

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan


@dataclass(frozen=True)
class Span:
    name: str
    scope: str  # the instrumentation that made it, e.g. opentelemetry.instrumentation.redis
    kind: str  # "server", "client", "internal", ...
    trace_id: str  # hex, as the service logs it
    span_id: str
    parent_span_id: str | None
    service_name: str
    attributes: dict[str, Any]


def _value(value: AnyValue) -> Any:
    field = value.WhichOneof("value")
    return getattr(value, field) if field else None


def _attributes(pairs: list[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def decode(payload: bytes) -> list[Span]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(payload)
    spans: list[Span] = []
    for resource_spans in request.resource_spans:
        service_name = _attributes(list(resource_spans.resource.attributes))["service.name"]
        for scope_spans in resource_spans.scope_spans:
            spans.extend(
                Span(
                    name=span.name,
                    scope=scope_spans.scope.name,
                    kind=ProtoSpan.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_").lower(),
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex() or None,
                    service_name=service_name,
                    attributes=_attributes(list(span.attributes)),
                )
                for span in scope_spans.spans
            )
    return spans


class OtlpReceiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OtlpHandler)
        self._spans: list[Span] = []
        self._lock = threading.Lock()
        self.requests = 0

    @property
    def endpoint(self) -> str:
        """The value for OTEL_EXPORTER_OTLP_ENDPOINT (the exporter appends /v1/traces)."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def keep(self, spans: list[Span]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1

    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    def wait_for_spans(
        self, condition: Callable[[list[Span]], bool], *, timeout: float, message: str
    ) -> list[Span]:
        """Poll until `condition(spans received)` holds; fail the test at the deadline."""
        deadline = time.monotonic() + timeout
        while not condition(spans := self.spans()):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s: {message}; received: {spans}")
            time.sleep(0.02)
        return spans


class _OtlpHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        cast(OtlpReceiver, self.server).keep(decode(body))
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A receiver serving in a thread on a free port of 127.0.0.1."""
    receiver = OtlpReceiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        receiver.server_close()
        thread.join()


def children_of(parent: Span, spans: list[Span]) -> list[Span]:
    return [span for span in spans if span.parent_span_id == parent.span_id]
