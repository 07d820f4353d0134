"""One shared httpx.AsyncClient, so outgoing requests reuse pooled keep-alive connections; its
requests travel on aiohttp (resources/aiohttp_transport.py)."""

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookiejar import Cookie, CookieJar
from typing import Any

import aiohttp
import httpx
import structlog

from {{ cookiecutter.package_name }}.metrics import ConnectionCounts
from {{ cookiecutter.package_name }}.middleware import REQUEST_ID_HEADER
from {{ cookiecutter.package_name }}.resources.aiohttp_transport import (
    AiohttpTransport,
    open_session,
)
from {{ cookiecutter.package_name }}.resources.aiohttp_transport import (
    connection_counts as session_connection_counts,
)
from {{ cookiecutter.package_name }}.resources.lifecycle import lifecycle
from {{ cookiecutter.package_name }}.settings import Settings

log = structlog.get_logger(__name__)


async def ping(client: httpx.AsyncClient) -> None:
    # Readiness must not depend on an upstream's health, or one slow upstream takes every
    # replica of this service out of the load balancer; the client itself only has to be open.
    if client.is_closed:
        raise RuntimeError("the HTTP client is closed")


def connection_counts(client: httpx.AsyncClient) -> ConnectionCounts:
    if not isinstance(client, _AiohttpClient):
        return ConnectionCounts(used=0, idle=0, limit=0)
    return session_connection_counts(client.session)


class _AiohttpClient(httpx.AsyncClient):
    """httpx.AsyncClient whose transports, the direct one and one per proxy that HTTP_PROXY,
    HTTPS_PROXY, ALL_PROXY and NO_PROXY name, send through one aiohttp session. httpx reads
    those variables (and SSL_CERT_FILE) itself, only for the transports it makes through these
    two methods: the way to keep its rules for them exactly (tests/test_http_proxies.py)."""

    def __init__(self, session: aiohttp.ClientSession, **kwargs: Any) -> None:
        self.session = session
        super().__init__(**kwargs)

    def _init_transport(
        self, verify: ssl.SSLContext | str | bool = True, *args: Any, **kwargs: Any
    ) -> httpx.AsyncBaseTransport:
        return AiohttpTransport(self.session, httpx.create_ssl_context(verify))

    def _init_proxy_transport(
        self,
        proxy: httpx.Proxy,
        verify: ssl.SSLContext | str | bool = True,
        *args: Any,
        **kwargs: Any,
    ) -> httpx.AsyncBaseTransport:
        return AiohttpTransport(self.session, httpx.create_ssl_context(verify), proxy)


def _trusted_authorities(settings: Settings) -> ssl.SSLContext:
    if settings.http_client_ca_bundle is not None:
        return ssl.create_default_context(cafile=settings.http_client_ca_bundle)
    # certifi's authorities, or SSL_CERT_FILE's / SSL_CERT_DIR's where set, as httpx chooses.
    return httpx.create_ssl_context(trust_env=settings.http_client_trust_env)


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
    limits = httpx.Limits(
        max_connections=settings.http_client_max_connections,
        keepalive_expiry=settings.http_client_keepalive_expiry,
    )
    session = open_session(
        limits,
        max_field_size=settings.http_client_max_header_bytes,
        max_headers=settings.http_client_max_headers,
    )
    client = _AiohttpClient(
        session,
        base_url=str(base_url) if base_url else "",
        timeout=httpx.Timeout(
            settings.http_client_timeout,
            connect=settings.http_client_connect_timeout,
            pool=settings.http_client_pool_timeout,
        ),
        limits=limits,
        # Reading the authorities' file is blocking I/O: not on the event loop.
        verify=await asyncio.to_thread(_trusted_authorities, settings),
        trust_env=settings.http_client_trust_env,
        event_hooks={"request": [_send_request_id], "response": [_log_response]},
        cookies=_NoCookies(),
    )

    async def close() -> None:
        await client.aclose()
        await session.close()

    async with lifecycle(
        "http_client",
        verify=None,  # needs no upstream to start
        close=close,
        deadline=deadline,
        close_timeout=settings.shutdown_timeout,
        target={"base_url_host": base_url.host if base_url else None},
    ):
        yield client
