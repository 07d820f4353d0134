"""The shared HTTP client's transport: HTTP/1.1 over asyncio, responses parsed by httptools.

httpx stays the interface: redirects, cookies, auth, decoding and the request-id hook are the
client's, and every failure raises the httpx exception that httpx's own transport raises for it
(tests/test_http_transport.py runs each failure against both). Only what happens on the wire is
ours. httpx's own transport parses in pure Python (h11), runs every read and write through anyio
and, for each call, walks its whole pool and polls each idle socket; here the parser is C (the
one uvicorn serves with), asyncio hands over each connection's bytes as they arrive, and a call
that finds an idle connection takes it without a system call. The benchmark's upstream route
measures the difference (README: Benchmarks).

What httpx.AsyncHTTPTransport offers that this does not: HTTP/2, proxies, Unix sockets, local
addresses and socket options, retries of failed connects. The service configures none of them.
A name with several addresses is tried one address after the other (uvloop's create_connection
races none), all within the connect timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

import httptools
import httpx

from {{ cookiecutter.package_name }}.metrics import ConnectionCounts

# Body bytes received and not yet taken by the caller, beyond which the socket is not read.
_READ_BUFFER_LIMIT = 2**16

_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_HEADER_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(rb"[\r\n\0]")
_FORBIDDEN_IN_TARGET = re.compile(rb"[\s\0]")
_BODY_FRAMING_HEADERS = (b"content-length", b"transfer-encoding")
_IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

Origin = tuple[bytes, str, int]


class _Connection(asyncio.Protocol):
    """One TCP connection to an origin, and the response being received on it. The parser is
    fed as bytes arrive; the caller waits for `_progress` (the head, body bytes, the end)."""

    def __init__(self, pool: _Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport
        self.loop = pool.loop
        self.idle_since = 0.0
        self.in_pool = True  # counted in the pool's open connections
        self.reused = False  # has carried a response before this one
        self.received_any = False  # of the current response
        self.closed_by_peer = False
        self.closed = False
        self.error: httpx.TransportError | None = None
        self._writable: asyncio.Future[None] | None = None
        self._progress: asyncio.Future[None] | None = None
        self._start_response(is_head=False)
        self._parser: httptools.HttpResponseParser | None = None

    # The response: what the parser has told of it so far.
    def _start_response(self, *, is_head: bool) -> None:
        self.is_head = is_head
        self.received_any = False
        self.status_code = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.body: list[bytes] = []
        self.body_size = 0
        self.complete = False
        self.keep_alive = False
        self.until_eof = False  # no length given: the body ends when the connection does
        self.reading_paused = False

    def begin(self, *, is_head: bool) -> None:
        self._start_response(is_head=is_head)
        self._parser = httptools.HttpResponseParser(self)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # A write returns once the kernel has taken all of it, so that the write timeout covers
        # all of a write, not all but the last 64 KiB (as httpx's own transport does).
        self.transport.set_write_buffer_limits(0)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        parser = self._parser
        if parser is None:  # bytes while idle, or after the response: nothing can follow them
            self._fail(httpx.RemoteProtocolError("the upstream sent bytes nobody asked for"))
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("upgrading the connection is not supported"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))
        else:
            if self.body_size > _READ_BUFFER_LIMIT and not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()
        self._wake(self._progress)

    def eof_received(self) -> bool:
        if self.until_eof and self.head_done:
            self.complete = True
            self._parser = None
        self._lost(None)
        return False  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake(self._writable)
        self._writable = None

    # httptools' callbacks. Bytes beyond the response's end (a body sent with the answer to a
    # HEAD, a second response) raise from the parser: the connection cannot be used again.
    def on_status(self, reason: bytes) -> None:
        self._refuse_after_end()
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._refuse_after_end()
        parser = cast(httptools.HttpResponseParser, self._parser)
        status_code = parser.get_status_code()
        if status_code < 200:  # 100 Continue and the like: the real response follows
            self.headers = []
            self.reason = b""
            return
        self.status_code = status_code
        self.head_done = True
        self.keep_alive = parser.should_keep_alive()
        if self.is_head:  # the body a GET would have had is announced, never sent
            self.complete = True
            self._parser = None
        elif status_code not in (204, 304):
            self.until_eof = not any(
                name.lower() in _BODY_FRAMING_HEADERS for name, _ in self.headers
            )

    def on_body(self, body: bytes) -> None:
        self._refuse_after_end()
        self.body.append(body)
        self.body_size += len(body)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self._parser = None

    def _refuse_after_end(self) -> None:
        if self.complete:
            raise httpx.RemoteProtocolError("the upstream sent more than its response")

    # What the caller does
    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise httpx.WriteError(str(self.error))
        self.transport.write(data)

    async def drained(self, seconds: float | None) -> None:
        """Once the kernel has taken every byte written; WriteTimeout after `seconds`."""
        if self._writable is not None:
            try:
                await _wait(self.loop, self._writable, seconds)
            except TimeoutError:
                raise httpx.WriteTimeout("timed out writing the request") from None
        if self.error is not None:
            raise httpx.WriteError(str(self.error))

    async def receive(self, seconds: float | None) -> None:
        """Until more of the response has come, or the connection broke (`error`);
        ReadTimeout after `seconds`."""
        if self.complete or self.error is not None:
            return
        self._progress = self.loop.create_future()
        try:
            await _wait(self.loop, self._progress, seconds)
        except TimeoutError:
            raise httpx.ReadTimeout("timed out waiting for the upstream") from None
        finally:
            self._progress = None

    def take_body(self) -> bytes:
        body = b"".join(self.body)
        self.body.clear()
        self.body_size = 0
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        return body

    def is_reusable(self, now: float, expiry: float | None) -> bool:
        return (
            self.error is None
            and not self.closed
            and (expiry is None or now - self.idle_since < expiry)
        )

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            # At once, dropping whatever the peer has not taken (a timed-out write's bytes).
            self.transport.abort()

    def _fail(self, error: httpx.TransportError) -> None:
        if self.error is None:
            self.error = error
        self._parser = None
        self.close()

    def _lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed_by_peer = True
        if self.error is None:
            if exc is not None:
                self.error = httpx.ReadError(str(exc) or type(exc).__name__)
            elif not self.head_done:
                self.error = httpx.RemoteProtocolError("the upstream closed without answering")
            else:
                self.error = httpx.RemoteProtocolError(
                    "the upstream closed before the body was complete"
                )
        self._wake(self._progress)
        self._wake(self._writable)
        self.pool.lost(self)

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def _wait(
    loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any], seconds: float | None
) -> None:
    """Await `waiter`; TimeoutError after `seconds` (None: no limit). One timer, where
    asyncio.timeout would add a cancellation and its bookkeeping to every read."""
    if seconds is None:
        await waiter
        return
    timer = loop.call_later(seconds, _time_out, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


def _time_out(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Pool:
    """At most `max_connections` open at once, idle ones kept for reuse (the most recently used
    first) up to `max_keepalive_connections` and for `keepalive_expiry` seconds. Calls that find
    no connection wait their turn in order, for at most the pool timeout."""

    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext) -> None:
        self.loop = asyncio.get_running_loop()
        self.max_connections = limits.max_connections
        self.max_idle = limits.max_keepalive_connections
        self.expiry = limits.keepalive_expiry
        self.ssl_context = ssl_context
        self.open = 0  # connections open or being opened
        self.idle: dict[Origin, deque[_Connection]] = {}
        self.idle_count = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    async def acquire(self, origin: Origin, timeouts: dict[str, float | None]) -> _Connection:
        if not self._waiters:
            connection = self._take_idle(origin)
            if connection is not None:
                return connection
            if self._make_room():
                return await self._connect(origin, timeouts.get("connect"), timeouts)
        return await self._wait_turn(origin, timeouts)

    async def _wait_turn(self, origin: Origin, timeouts: dict[str, float | None]) -> _Connection:
        seconds = timeouts.get("pool")
        deadline = None if seconds is None else self.loop.time() + seconds
        while True:
            turn = self.loop.create_future()
            self._waiters.append(turn)
            try:
                remaining = None if deadline is None else max(0.0, deadline - self.loop.time())
                await _wait(self.loop, turn, remaining)
            except TimeoutError:
                self._waiters.remove(turn)
                raise httpx.PoolTimeout("every connection stayed busy") from None
            except BaseException:  # cancelled: a turn given to this call passes to the next
                if turn in self._waiters:
                    self._waiters.remove(turn)
                elif turn.done() and not turn.cancelled() and turn.exception() is None:
                    self._give_turn()
                raise
            connection = self._take_idle(origin)
            if connection is not None:
                return connection
            if self._make_room():
                return await self._connect(origin, timeouts.get("connect"), timeouts)

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self.idle.get(origin)
        if not idle:
            return None
        now = self.loop.time()
        while idle:
            connection = idle.pop()
            self.idle_count -= 1
            if connection.is_reusable(now, self.expiry):
                connection.reused = True
                return connection
            self._drop(connection)
        return None

    def _make_room(self) -> bool:
        """Whether one more connection may open, after closing an idle one if that makes room."""
        if self.max_connections is None or self.open < self.max_connections:
            return True
        oldest: _Connection | None = None
        for idle in self.idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is None:
            return False
        self.idle[oldest.origin].popleft()
        self.idle_count -= 1
        self._drop(oldest)
        return True

    async def _connect(
        self, origin: Origin, seconds: float | None, timeouts: dict[str, float | None]
    ) -> _Connection:
        scheme, host, port = origin
        self.open += 1
        try:
            async with asyncio.timeout(seconds):
                _, connection = await self.loop.create_connection(
                    lambda: _Connection(self, origin),
                    host,
                    port,
                    ssl=self.ssl_context if scheme == b"https" else None,
                )
        except TimeoutError:
            self._opening_failed()
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:  # refused, unreachable, unknown name, TLS (ssl.SSLError)
            self._opening_failed()
            raise httpx.ConnectError(f"{host}:{port}: {exc}") from None
        except BaseException:
            self._opening_failed()
            raise
        return connection

    def _opening_failed(self) -> None:
        self.open -= 1
        self._give_turn()

    def release(self, connection: _Connection) -> None:
        """A connection whose response has been read to its end."""
        if self.closed or not connection.keep_alive or connection.error is not None:
            self._drop(connection)
            return
        if self.max_idle is not None and self.idle_count >= self.max_idle:
            self._drop(connection)
            return
        connection.idle_since = self.loop.time()
        self.idle.setdefault(connection.origin, deque()).append(connection)
        self.idle_count += 1
        self._give_turn()

    def discard(self, connection: _Connection) -> None:
        """A connection whose response was not read to its end: it cannot carry another."""
        self._drop(connection)

    def lost(self, connection: _Connection) -> None:
        """The peer closed, or the connection broke: an idle one leaves the pool at once."""
        idle = self.idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)
            self.idle_count -= 1
            self._drop(connection)

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        if connection.in_pool:
            connection.in_pool = False
            self.open -= 1
            self._give_turn()

    def _give_turn(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return

    def counts(self) -> ConnectionCounts:
        return ConnectionCounts(
            used=self.open - self.idle_count,
            idle=self.idle_count,
            limit=self.max_connections or 0,
        )

    def close(self) -> None:
        self.closed = True
        for idle in self.idle.values():
            while idle:
                self._drop(idle.pop())
        self.idle_count = 0


class _ResponseBody(httpx.AsyncByteStream):
    """The rest of a response's body, as the upstream sends it."""

    def __init__(self, pool: _Pool, connection: _Connection, read_timeout: float | None) -> None:
        self._pool = pool
        self._connection = connection
        self._read_timeout = read_timeout
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        try:
            while True:
                if connection.body:
                    yield connection.take_body()
                if connection.complete:
                    break
                if connection.error is not None:
                    raise connection.error
                await connection.receive(self._read_timeout)
        except BaseException:
            self._finish(reusable=False)
            raise
        self._finish(reusable=True)

    async def aclose(self) -> None:
        self._finish(reusable=False)  # not read to the end: the connection cannot be reused

    def _finish(self, *, reusable: bool) -> None:
        if not self._done:
            self._done = True
            if reusable:
                self._pool.release(self._connection)
            else:
                self._pool.discard(self._connection)


class HttpTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to any origin, with httpx's `limits` and timeouts, TLS verified against
    certifi's roots or SSL_CERT_FILE. Created inside the running event loop it serves."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._pool = _Pool(limits, httpx.create_ssl_context())

    def connection_counts(self) -> ConnectionCounts:
        return self._pool.counts()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"the URL's scheme is not http or https: {url}")
        origin = (scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
        head, body, keep_alive = _serialize(request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        for attempt in range(2):
            connection = await self._exchange(origin, request, head, body, timeouts)
            if connection.head_done:
                break
            self._pool.discard(connection)
            # The upstream may have closed the idle connection (its keep-alive timeout) as the
            # request went out: then a request that is safe to repeat goes once more.
            if attempt or not _closed_when_reused(connection, request):
                raise cast(httpx.TransportError, connection.error)
        if not keep_alive:
            connection.keep_alive = False
        stream: httpx.AsyncByteStream
        if connection.complete:  # all of it is here (the usual case): the connection is free
            stream = httpx.ByteStream(connection.take_body())
            self._pool.release(connection)
        else:
            stream = _ResponseBody(self._pool, connection, timeouts.get("read"))
        return httpx.Response(
            connection.status_code,
            headers=connection.headers,
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": connection.reason},
        )

    async def _exchange(
        self,
        origin: Origin,
        request: httpx.Request,
        head: bytes,
        body: bytes | None,
        timeouts: dict[str, float | None],
    ) -> _Connection:
        """Send the request on a connection of the pool, and return that connection once the
        response's head has come, or once it broke before that (its `error`). A timeout, or
        a cancellation, closes the connection and raises."""
        connection = await self._pool.acquire(origin, timeouts)
        connection.begin(is_head=request.method == "HEAD")
        try:
            # The upstream may have answered before it stopped reading (a 413, say).
            with contextlib.suppress(httpx.WriteError):
                await _send(connection, request, head, body, timeouts.get("write"))
            read_timeout = timeouts.get("read")
            while not connection.head_done and connection.error is None:
                await connection.receive(read_timeout)
        except BaseException:
            self._pool.discard(connection)
            raise
        return connection

    async def aclose(self) -> None:
        self._pool.close()


def _serialize(request: httpx.Request) -> tuple[bytes, bytes | None, bool]:
    """The request's head, its body if it is already in memory (None: it streams), and whether
    the connection may carry another request after it."""
    target = request.url.raw_path
    if _FORBIDDEN_IN_TARGET.search(target):
        raise httpx.LocalProtocolError("the request target holds whitespace")
    lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    keep_alive = True
    for name, value in request.headers.raw:
        if not _HEADER_NAME.fullmatch(name):
            raise httpx.LocalProtocolError(f"illegal header name {name!r}")
        if _FORBIDDEN_IN_VALUE.search(value):
            raise httpx.LocalProtocolError(f"illegal value of header {name!r}")
        if name.lower() == b"connection" and value.lower() == b"close":
            keep_alive = False
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    try:
        body: bytes | None = request.content
    except httpx.RequestNotRead:
        body = None
    return b"".join(lines), body, keep_alive


async def _send(
    connection: _Connection,
    request: httpx.Request,
    head: bytes,
    body: bytes | None,
    write_timeout: float | None,
) -> None:
    if body is not None:
        connection.write(head + body)
        await connection.drained(write_timeout)
        return
    connection.write(head)
    await connection.drained(write_timeout)
    chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
    async for chunk in cast(httpx.AsyncByteStream, request.stream):
        if chunk:
            connection.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await connection.drained(write_timeout)
    if chunked:
        connection.write(b"0\r\n\r\n")
        await connection.drained(write_timeout)


def _closed_when_reused(connection: _Connection, request: httpx.Request) -> bool:
    """Whether the upstream closed a reused connection before a byte of the response came, and
    the request can be sent again: sending it twice is as good as once (RFC 9110, 9.2.2) and
    its body, if any, is in memory."""
    if not (connection.reused and connection.closed_by_peer and not connection.received_any):
        return False
    if request.method.encode("ascii") not in _IDEMPOTENT_METHODS:
        return False
    try:
        request.content  # noqa: B018 (raises if the body streams)
    except httpx.RequestNotRead:
        return False
    return True
