"""One shared httpx.AsyncClient, so outgoing requests reuse pooled keep-alive connections."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import structlog

from {{ cookiecutter.package_name }}.metrics import ConnectionCounts
from {{ cookiecutter.package_name }}.middleware import REQUEST_ID_HEADER
from {{ cookiecutter.package_name }}.resources.http_transport import AsyncioTransport
from {{ cookiecutter.package_name }}.resources.lifecycle import lifecycle
from {{ cookiecutter.package_name }}.settings import Settings


async def ping(client: httpx.AsyncClient) -> None:
    # Readiness must not depend on an upstream's health, or one slow upstream takes every
    # replica of this service out of the load balancer; the client itself only has to be open.
    if client.is_closed:
        raise RuntimeError("the HTTP client is closed")


def connection_counts(client: httpx.AsyncClient) -> ConnectionCounts:
    # httpx shows no pool figures; httpcore's pool does, behind attributes that httpx keeps
    # private (tests/test_metrics.py fails should a release move them).
    transport = client._transport
    if not isinstance(transport, httpx.AsyncHTTPTransport):
        return ConnectionCounts(used=0, idle=0, limit=0)
    pool = transport._pool
    connections = pool.connections
    idle = sum(connection.is_idle() for connection in connections)
    return ConnectionCounts(used=len(connections) - idle, idle=idle, limit=pool._max_connections)


async def _send_request_id(request: httpx.Request) -> None:
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id is not None:
        request.headers[REQUEST_ID_HEADER] = request_id


@asynccontextmanager
async def open_http_client(settings: Settings, deadline: float) -> AsyncIterator[httpx.AsyncClient]:
    base_url = settings.http_client_base_url
    client = httpx.AsyncClient(
        base_url=str(base_url) if base_url else "",
        timeout=httpx.Timeout(
            settings.http_client_timeout,
            connect=settings.http_client_connect_timeout,
            pool=settings.http_client_pool_timeout,
        ),
        transport=AsyncioTransport(
            httpx.Limits(
                max_connections=settings.http_client_max_connections,
                max_keepalive_connections=settings.http_client_max_keepalive_connections,
                keepalive_expiry=settings.http_client_keepalive_expiry,
            )
        ),
        event_hooks={"request": [_send_request_id]},
    )
    async with lifecycle(
        "http_client",
        verify=None,  # needs no upstream to start
        close=client.aclose,
        deadline=deadline,
        close_timeout=settings.shutdown_timeout,
        target={"base_url_host": base_url.host if base_url else None},
    ):
        yield client
