"""One structured log stream on stdout: our events and every stdlib record, uvicorn's included."""

import importlib.util
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import structlog
{%- if cookiecutter.use_opentelemetry %}
from opentelemetry import trace
{%- endif %}
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, ExceptionRenderer, Processor


def _orjson_dumps(value: Any, **kwargs: Any) -> str:
    return orjson.dumps(value, default=kwargs.get("default"), option=orjson.OPT_UTC_Z).decode()


def _add_utc_datetime(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    # orjson writes the datetime as ISO 8601 in C: a line per request cannot afford
    # formatting it in Python.
    event_dict["timestamp"] = datetime.now(UTC)
    return event_dict


{%- if cookiecutter.use_opentelemetry %}


def _add_trace_ids(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    # Any line written inside a span (a request, a SQL statement, ...) can be found from its
    # trace in the tracing backend, and the other way round. Hex, as OpenTelemetry shows them.
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = trace.format_trace_id(context.trace_id)
        event_dict["span_id"] = trace.format_span_id(context.span_id)
    return event_dict
{%- endif %}


def _traceback_without_locals() -> ExceptionRenderer:
    """Rich's traceback where rich is installed, the plain one otherwise: never with locals."""
    if importlib.util.find_spec("rich") is None:
        return structlog.dev.plain_traceback
    return structlog.dev.RichTracebackFormatter(show_locals=False)


def configure_logging(log_format: Literal["json", "console"], log_level: str) -> None:
    # Tracebacks name each frame's file, line and function, but show none of its local
    # variables: those hold secrets (a driver's connect parameters with the password, the
    # ASGI scope with the Authorization and Cookie headers), and redacting them would mean
    # knowing every name that every library gives a secret.
    if log_format == "json":
        timestamper: Processor = _add_utc_datetime
        rendering: list[Processor] = [
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ]
    else:
        timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
        rendering = [
            structlog.dev.ConsoleRenderer(
                colors=sys.stdout.isatty(), exception_formatter=_traceback_without_locals()
            )
        ]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
{%- if cookiecutter.use_opentelemetry %}
        _add_trace_ids,
{%- endif %}
        structlog.stdlib.add_log_level,
        timestamper,
    ]

    # Our own events skip the standard library's machinery (log records, caller lookup,
    # handlers): a line per request cannot afford it. They name themselves (resource.*, http.*).
    structlog.configure(
        processors=[*shared, *rendering],
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(log_level)),
        cache_logger_on_first_use=True,
    )
    # Records of uvicorn, httpx, ... go through the same processors, to the same stream.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(log_level)

    # uvicorn installs its own handlers before it imports the app: route its records through ours.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # The request middleware logs every request with its request id; uvicorn's access line
    # would only repeat it without one.
    logging.getLogger("uvicorn.access").handlers = []
    logging.getLogger("uvicorn.access").propagate = False
{%- if cookiecutter.use_http_client %}
    # The HTTP client logs each call itself (http_client.response), without the query string.
    logging.getLogger("httpx").setLevel(logging.WARNING)
{%- endif %}
