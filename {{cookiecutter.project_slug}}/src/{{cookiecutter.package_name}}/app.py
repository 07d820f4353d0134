"""The application factory. Creating an app opens nothing: its lifespan does, once it starts."""

from functools import partial

from fastapi import FastAPI
{%- set routers = (["cache"] if cookiecutter.use_redis else [])
    + ["health"]
    + (["notes"] if cookiecutter.use_postgres else [])
    + (["upstream"] if cookiecutter.use_http_client else []) %}

from {{ cookiecutter.package_name }}.api import {{ routers | join(", ") }}
from {{ cookiecutter.package_name }}.lifespan import lifespan
from {{ cookiecutter.package_name }}.middleware import RequestContextMiddleware
{%- if cookiecutter.use_postgres or cookiecutter.use_redis %}
from {{ cookiecutter.package_name }}.resources.lifecycle import (
    ResourceUnavailableError,
    respond_unavailable,
)
{%- endif %}
from {{ cookiecutter.package_name }}.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title={{ cookiecutter.project_name | tojson }},
        description={{ cookiecutter.description | tojson }},
        lifespan=partial(lifespan, settings=settings),
{%- if cookiecutter.use_postgres or cookiecutter.use_redis %}
        exception_handlers={ResourceUnavailableError: respond_unavailable},
{%- endif %}
    )
    app.add_middleware(RequestContextMiddleware)
    app.include_router(health.router)
{%- if cookiecutter.use_postgres %}
    app.include_router(notes.router)
{%- endif %}
{%- if cookiecutter.use_redis %}
    app.include_router(cache.router)
{%- endif %}
{%- if cookiecutter.use_http_client %}
    app.include_router(upstream.router)
{%- endif %}
    return app
