"""The application factory. Creating an app opens nothing: its lifespan does, once it starts."""

from functools import partial

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
{%- set routers = ["background"]
    + (["cache"] if cookiecutter.use_redis else [])
    + ["docs", "health"]
    + (["messages"] if cookiecutter.use_rabbitmq else [])
    + ["metrics"]
    + (["notes"] if cookiecutter.use_postgres else [])
    + (["principal"] if cookiecutter.use_auth else [])
    + (["upstream"] if cookiecutter.use_http_client else []) %}

from {{ cookiecutter.package_name }}.api import (
{%- for router in routers %}
    {{ router }},
{%- endfor %}
)
from {{ cookiecutter.package_name }}.lifespan import lifespan
from {{ cookiecutter.package_name }}.metrics import request_metrics
from {{ cookiecutter.package_name }}.middleware import RequestContextMiddleware
{%- if cookiecutter.use_postgres or cookiecutter.use_rabbitmq %}
from {{ cookiecutter.package_name }}.resources.lifecycle import (
    ResourceUnavailableError,
    respond_unavailable,
)
{%- endif %}
{%- if cookiecutter.use_redis %}
from {{ cookiecutter.package_name }}.resources.redis import OUTAGE_ERRORS, respond_redis_unavailable
{%- endif %}
{%- if cookiecutter.use_opentelemetry %}
from {{ cookiecutter.package_name }}.resources.tracing import new_tracer_provider, trace_requests
{%- endif %}
from {{ cookiecutter.package_name }}.settings import Settings


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 without the input it would echo: that may hold what should not be sent
    back, and may not even encode (a lone surrogate in the JSON made the default a 500)."""
    errors = [{"type": e["type"], "loc": e["loc"], "msg": e["msg"]} for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def create_app(settings: Settings) -> FastAPI:
{%- if cookiecutter.use_opentelemetry %}
    # Here rather than in the lifespan, which only starts and stops its export: the server-span
    # middleware takes its tracer when Starlette builds the middleware stack, before the lifespan.
    tracer_provider = new_tracer_provider()
{%- endif %}
    app = FastAPI(
        title={{ cookiecutter.project_name | tojson }},
        description={{ cookiecutter.description | tojson }},
        # FastAPI's own /docs and /redoc load their files from CDNs; add_docs serves /docs below.
        openapi_url=docs.OPENAPI_PATH if settings.docs_enabled else None,
        docs_url=None,
        redoc_url=None,
        # FastAPI's own OpenTelemetry, on whenever global providers are set: the service keeps
        # its own metrics (and traces, when built with them), which this would duplicate, and
        # it looks for those providers on every request (7% of a /health/live request).
        telemetry={"tracing": False, "metrics": False, "logs": False},
{%- if cookiecutter.use_opentelemetry %}
        lifespan=partial(lifespan, settings=settings, tracer_provider=tracer_provider),
{%- else %}
        lifespan=partial(lifespan, settings=settings),
{%- endif %}
        exception_handlers={
            RequestValidationError: _invalid_request,
{%- if cookiecutter.use_postgres or cookiecutter.use_rabbitmq %}
            ResourceUnavailableError: respond_unavailable,
{%- endif %}
{%- if cookiecutter.use_redis %}
            **dict.fromkeys(OUTAGE_ERRORS, respond_redis_unavailable),
{%- endif %}
        },
    )
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_request_body_bytes,
        probe_log_level=settings.probe_log_level,
        metrics=request_metrics() if settings.metrics_enabled else None,
    )
    # The probes' routes go first, on the app itself: they are the most frequent requests, and
    # every route before them, and an included router's own routing layer (FastAPI >= 0.137),
    # costs each of them (the benchmark's /health/live: 17% fewer instructions than included).
    app.router.routes[0:0] = health.router.routes
{%- if cookiecutter.use_postgres %}
    app.include_router(notes.router)
{%- endif %}
{%- if cookiecutter.use_redis %}
    app.include_router(cache.router)
{%- endif %}
{%- if cookiecutter.use_http_client %}
    app.include_router(upstream.router)
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
    app.include_router(messages.router)
{%- endif %}
    app.include_router(background.router)
{%- if cookiecutter.use_auth %}
    app.include_router(principal.router)
{%- endif %}
    if settings.metrics_enabled:
        # The last router: each is a routing layer of its own, which every request to a route
        # after it pays for; a scrape every few seconds can pay that instead.
        app.include_router(metrics.router)
    if settings.docs_enabled:
        # Last of all: a person opening the docs now and then can pay for the routes before.
        docs.add_docs(app)
{%- if cookiecutter.use_opentelemetry %}
    trace_requests(app, tracer_provider)
{%- endif %}
    return app
