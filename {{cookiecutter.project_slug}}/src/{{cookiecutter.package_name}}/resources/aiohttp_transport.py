"""httpx requests sent by aiohttp: the shared client's wire is aiohttp's (its connection pool,
request framing, C response parser, TLS and proxies), and httpx stays the interface.

This module only translates. A request goes to aiohttp with httpx's headers, timeouts and body;
the response comes back as an httpx.Response whose body streams from aiohttp's; and each
failure is raised as the httpx exception that httpx's own transport raises for it
(tests/test_http_transport.py runs every case against both). What aiohttp does not do as httpx
does is done here, each small:

- The pool timeout. aiohttp bounds waiting for a free connection and making a new one with one
  timeout; httpx bounds them apart (`pool` and `connect`). The wait alone is bounded here, where
  the pool makes a caller wait.
- The write timeout. aiohttp has none: each chunk of a request body it is handed here must be
  taken within httpx's write timeout (aiohttp's read timeout starts once the body is written).
- Framing headers that disagree with the body (a Content-Length that is not the body's length,
  both Content-Length and Transfer-Encoding, a stream longer or shorter than its
  Content-Length) are refused before they reach the wire, as httpx's h11 refuses them: aiohttp
  would send such a body cut to its length, or leave the upstream waiting for the rest.
- A status below 100 is refused, as h11 refuses it.
- Two edges of aiohttp's connection pool, in `_Connector`.
"""

import asyncio
import functools
import re
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import aiohttp
import httpx
import yarl
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.connector import Connection

from {{ cookiecutter.package_name }}.metrics import ConnectionCounts

# Added by aiohttp unless told not to: httpx sends its own, or none if the caller removed them.
_AIOHTTP_OWN_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_WRITE_SLICE = 2**16
# A header name, as RFC 9110 allows it (aiohttp would send a space or a colon in one).
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


# The pool timeout of the call being made: the pool reads it where it makes the call wait.
_pool_timeout: ContextVar[float | None] = ContextVar("pool_timeout", default=None)


class _Exchange:
    """One request on its way out: whether it is writing its body, under the deadline that
    httpx's write timeout sets for each chunk."""

    __slots__ = ("body_error", "deadline", "write_timeout", "writing")

    deadline: asyncio.Timeout | None  # while the body is being written and no answer is in

    def __init__(self, timeouts: dict[str, float | None]) -> None:
        self.deadline = None
        self.write_timeout = timeouts.get("write")
        self.writing = False
        # Raised by the body, or by its check here, in aiohttp's writing task: aiohttp hands the
        # caller a connection error instead, and the caller gets this.
        self.body_error: Exception | None = None

    def due_in(self, seconds: float | None) -> None:
        if self.deadline is not None and not self.deadline.expired():
            when = None if seconds is None else asyncio.get_running_loop().time() + seconds
            self.deadline.reschedule(when)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's pool, with httpx's pool timeout and three of its edges fixed
    (tests/test_http_transport.py has each).

    A connection it drops in the middle of an exchange (a timeout, a cancelled call, a response
    body left unread) is aborted rather than closed: a graceful close waits to flush what an
    upstream may never take, and on uvloop keeps reading what it still sends (uvloop issue 471),
    so a stuck upstream would hold the socket for good. A connection the upstream has written to
    while idle is dropped when next taken, as httpcore drops it: aiohttp would hand what arrived
    to the next caller as its answer. And a caller that leaves the queue just as a connection
    was handed to it passes it on to the next caller."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._factory = functools.partial(_Handler, loop=self._loop)  # type: ignore[assignment]

    def _release(
        self, key: ConnectionKey, protocol: ResponseHandler, *, should_close: bool = False
    ) -> None:
        transport = protocol.transport
        if (should_close or protocol.should_close) and transport is not None:
            transport.abort()
        super()._release(key, protocol, should_close=should_close)
        if isinstance(protocol, _Handler):
            protocol.idle = True

    async def _get(
        self, key: ConnectionKey, traces: list[aiohttp.tracing.Trace]
    ) -> Connection | None:
        while (connection := await super()._get(key, traces)) is not None:
            protocol = connection.protocol
            if isinstance(protocol, _Handler) and not protocol.should_close:
                protocol.idle = False
                return connection
            connection.close()
        return None

    async def _wait_for_available_connection(
        self, key: ConnectionKey, traces: list[aiohttp.tracing.Trace]
    ) -> None:
        try:
            async with asyncio.timeout(_pool_timeout.get()):
                await super()._wait_for_available_connection(key, traces)
        except BaseException as exc:
            # Woken for a connection given back, then cancelled or timed out before taking it:
            # aiohttp would leave the next caller waiting while that connection sits idle.
            self._release_waiter()
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout(
                    "no connection became free within the pool timeout"
                ) from exc
            raise


class _Handler(ResponseHandler):
    """aiohttp's protocol of one connection, which tells whether the connection received
    anything while idle in the pool."""

    idle = False

    def data_received(self, data: bytes) -> None:
        if self.idle and data:
            self.force_close()
        super().data_received(data)


def open_session(
    limits: httpx.Limits, *, max_field_size: int, max_headers: int
) -> aiohttp.ClientSession:
    """The aiohttp session every request of the client goes through: one connection pool."""
    connector = _Connector(
        limit=limits.max_connections or 0,
        keepalive_timeout=limits.keepalive_expiry,
        # Cached by the operating system's resolver, or not, as for every other client.
        use_dns_cache=False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # httpx keeps (or not) the cookies, follows the redirects and decodes the body.
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=_AIOHTTP_OWN_HEADERS,
        timeout=aiohttp.ClientTimeout(total=None, connect=None),
        max_line_size=max_field_size,
        max_field_size=max_field_size,
        max_headers=max_headers,
    )


def connection_counts(session: aiohttp.ClientSession) -> ConnectionCounts:
    # aiohttp shows its limit, not its counts: these two sets are its pool's own
    # (tests/test_http_client.py pins them).
    connector = session.connector
    if not isinstance(connector, aiohttp.TCPConnector):
        return ConnectionCounts(used=0, idle=0, limit=0)
    idle = sum(len(connections) for connections in connector._conns.values())
    return ConnectionCounts(used=len(connector._acquired), idle=idle, limit=connector.limit)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx's requests through `session`, directly or through `proxy`. The session is
    shared by the transports of one client (httpx makes one per proxy) and closed by its owner."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        ssl_context: ssl.SSLContext,
        proxy: httpx.Proxy | None = None,
    ) -> None:
        self._session = session
        self._ssl = ssl_context
        self._proxy = None if proxy is None else str(proxy.url)
        self._proxy_headers: dict[str, str] | None = None
        self._proxy_authorization: str | None = None
        if proxy is not None:
            self._proxy_headers = dict(proxy.headers)
            if proxy.auth is not None:
                self._proxy_authorization = aiohttp.encode_basic_auth(*proxy.auth)
                # With the CONNECT of an https call. (aiohttp's proxy_auth argument, which would
                # also do the next, is deprecated.)
                self._proxy_headers["Proxy-Authorization"] = self._proxy_authorization

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        headers, body, chunked = _framed(request)
        if self._proxy_authorization is not None and request.url.scheme == "http":
            # A plain http call goes to the proxy as it is: the proxy's credentials with it.
            headers.append(("Proxy-Authorization", self._proxy_authorization))
        exchange = _Exchange(timeouts)
        data = None if body is None else _written_within_the_write_timeout(body, exchange)
        _pool_timeout.set(timeouts.get("pool"))
        sending = self._session.request(
            request.method,
            # As httpx encoded it: yarl would decode %3B, %3D, %26, ... again.
            yarl.URL(str(request.url), encoded=True),
            headers=headers,
            data=data,
            chunked=chunked,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=None,
                sock_connect=timeouts.get("connect"),
                sock_read=timeouts.get("read"),
            ),
            ssl=self._ssl,
            proxy=self._proxy,
            proxy_headers=self._proxy_headers,
        )
        with _raised_as_httpx(exchange):
            if data is None:
                response = await sending
            else:
                try:
                    async with asyncio.timeout(None) as exchange.deadline:
                        response = await sending
                finally:
                    exchange.deadline = None

        if response.status < 100:
            response.close()
            raise httpx.RemoteProtocolError(f"status {response.status} is not an HTTP status")
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response, exchange),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )


class _ResponseBody(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, exchange: _Exchange) -> None:
        self._response = response
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _raised_as_httpx(self._exchange):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # The connection goes back to the pool if the body was read to its end, else it closes.
        self._response.release()


class _Stream:
    """A request body of unknown length, refused where it does not fit its Content-Length."""

    def __init__(self, chunks: Any, length: int | None) -> None:
        self.chunks: AsyncIterable[bytes] = chunks
        self.length = length


def _framed(
    request: httpx.Request,
) -> tuple[list[tuple[str, str]], bytes | _Stream | None, bool | None]:
    """The headers, body and framing to hand to aiohttp, or LocalProtocolError for framing
    headers that do not fit the body."""
    length_header = request.headers.get("content-length")
    coding = request.headers.get("transfer-encoding")
    if length_header is not None and coding is not None:
        raise httpx.LocalProtocolError("both Content-Length and Transfer-Encoding are set")
    if coding is not None and coding.lower() != "chunked":
        raise httpx.LocalProtocolError(f"Transfer-Encoding {coding!r} is not supported")
    if length_header is not None and not (length_header.isascii() and length_header.isdigit()):
        raise httpx.LocalProtocolError(f"Content-Length {length_header!r} is not a length")
    length = None if length_header is None else int(length_header)
    try:
        content: bytes | None = request.content
    except httpx.RequestNotRead:
        content = None
    if content is not None and length is not None and len(content) != length:
        raise httpx.LocalProtocolError(
            f"a body of {len(content)} bytes under Content-Length: {length}"
        )
    for name, _ in request.headers.raw:
        if not _TOKEN.fullmatch(name):
            raise httpx.LocalProtocolError(f"illegal header name {name!r}")
    # aiohttp frames the body itself: chunked, or with the Content-Length kept here.
    headers = [
        (name, value)
        for name, value in request.headers.multi_items()
        if name != "transfer-encoding"
    ]
    if content is not None:
        return headers, content or None, None
    # (chunked=False would be taken as chunked: None leaves the Content-Length framing.)
    return headers, _Stream(request.stream, length), True if length is None else None


async def _fitting_its_length(body: _Stream) -> AsyncIterator[bytes]:
    sent = 0
    async for chunk in body.chunks:
        sent += len(chunk)
        if body.length is not None and sent > body.length:
            raise httpx.LocalProtocolError(
                f"the body is longer than its Content-Length {body.length}"
            )
        yield chunk
    if body.length is not None and sent < body.length:
        raise httpx.LocalProtocolError(
            f"the body ended at {sent} bytes of its Content-Length {body.length}"
        )


async def _written_within_the_write_timeout(
    body: bytes | _Stream, exchange: _Exchange
) -> AsyncIterator[bytes]:
    # aiohttp asks for the next chunk once it has written the one before: each chunk gets the
    # write timeout.
    exchange.writing = True
    if isinstance(body, bytes):
        # In slices: aiohttp waits for the socket to take each before it asks for the next, so
        # a body the upstream does not read waits here, not in the event loop's write buffer.
        for start in range(0, len(body), _WRITE_SLICE):
            exchange.due_in(exchange.write_timeout)
            yield body[start : start + _WRITE_SLICE]
    else:
        try:
            async for chunk in _fitting_its_length(body):
                exchange.due_in(exchange.write_timeout)
                yield chunk
        except Exception as exc:
            exchange.body_error = exc
            raise
    exchange.writing = False
    exchange.due_in(None)


# aiohttp's exceptions and the httpx ones httpx's own transport raises for the same failure, the
# first that matches (subclasses first).
_AS_HTTPX: list[tuple[type[Exception], type[httpx.TransportError]]] = [
    # A CONNECT the proxy refused.
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    # A response head that is not HTTP, or past aiohttp's line, field and header limits.
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    # A body cut short or badly framed; no answer at all.
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    # Refused, unresolved, unreachable, or a certificate that is not trusted.
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerFingerprintMismatch, httpx.ConnectError),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    # aiohttp refuses a method or header that would break the request's framing.
    (ValueError, httpx.LocalProtocolError),
]


@contextmanager
def _raised_as_httpx(exchange: _Exchange) -> Iterator[None]:
    try:
        yield
    except httpx.HTTPError:
        raise
    except Exception as exc:
        mapped = _as_httpx(exc, exchange)
        if mapped is exc:
            raise
        raise mapped from exc


def _as_httpx(exc: Exception, exchange: _Exchange) -> Exception:
    if exchange.body_error is not None:
        return exchange.body_error
    message = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return _timeout(exc, exchange)
    for aiohttp_error, httpx_error in _AS_HTTPX:
        if isinstance(exc, aiohttp_error):
            return httpx_error(message)
    if isinstance(exc, (aiohttp.ClientOSError, aiohttp.ClientConnectionError)):
        return (httpx.WriteError if exchange.writing else httpx.ReadError)(message)
    return exc


def _timeout(exc: TimeoutError, exchange: _Exchange) -> httpx.TimeoutException:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if exchange.writing:
        return httpx.WriteTimeout("the request's body was not taken within the write timeout")
    return httpx.ReadTimeout(message)
