"""One shared httpx.AsyncClient, so outgoing requests reuse pooled keep-alive connections."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookiejar import Cookie, CookieJar
from typing import Any

import httpx
import structlog

from {{ cookiecutter.package_name }}.metrics import ConnectionCounts
from {{ cookiecutter.package_name }}.middleware import REQUEST_ID_HEADER
from {{ cookiecutter.package_name }}.resources.http_transport import HttpTransport
from {{ cookiecutter.package_name }}.resources.lifecycle import lifecycle
from {{ cookiecutter.package_name }}.settings import Settings

log = structlog.get_logger(__name__)


async def ping(client: httpx.AsyncClient) -> None:
    # Readiness must not depend on an upstream's health, or one slow upstream takes every
    # replica of this service out of the load balancer; the client itself only has to be open.
    if client.is_closed:
        raise RuntimeError("the HTTP client is closed")


def connection_counts(client: httpx.AsyncClient) -> ConnectionCounts:
    # httpx keeps the client's transport private, and shows no pool figures; ours does.
    transport = client._transport
    if not isinstance(transport, HttpTransport):
        return ConnectionCounts(used=0, idle=0, limit=0)
    return transport.connection_counts()


class _NoCookies(CookieJar):
    """Keeps no cookie an upstream sets: the client is shared by every request the service
    serves, so a cookie from one caller's call must not go out with the next caller's. (A
    `cookies=` given to one call is still sent with it.) Skipping httpx's handling of them
    also saves 8% of a call's instructions."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass

    def set_cookie(self, cookie: Cookie) -> None:
        pass


async def _send_request_id(request: httpx.Request) -> None:
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id is not None:
        request.headers[REQUEST_ID_HEADER] = request_id


async def _log_response(response: httpx.Response) -> None:
    # In place of httpx's own line (logging.py turns it off): that one goes through the standard
    # library's logging, 7% of the /upstream route's instructions, and shows the query string,
    # where a caller may have put a token.
    url = response.request.url
    log.info(
        "http_client.response",
        method=response.request.method,
        host=url.host,
        path=url.path,
        status=response.status_code,
    )


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
        transport=HttpTransport(
            httpx.Limits(
                max_connections=settings.http_client_max_connections,
                max_keepalive_connections=settings.http_client_max_keepalive_connections,
                keepalive_expiry=settings.http_client_keepalive_expiry,
            )
        ),
        event_hooks={"request": [_send_request_id], "response": [_log_response]},
        cookies=_NoCookies(),
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
