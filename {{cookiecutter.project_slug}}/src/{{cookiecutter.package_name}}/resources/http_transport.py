"""httpx's own transport, with its sockets driven by asyncio directly instead of through anyio.

Everything that decides what a call does stays httpx's and httpcore's: the connection pool
(`httpx.Limits`, the pool timeout), HTTP/1.1 (h11), and the mapping of each failure to the
httpx exception a caller catches. Only the bytes take a shorter way: anyio wraps every read
and write in a cancel scope, and httpcore asks it, for every idle connection each time a call
starts or ends, whether the socket is readable, which anyio answers with a poll() system call.
Here a connection's state is at hand (asyncio hands over its bytes as they arrive), and a
timeout is one timer. Each I/O failure raises the httpcore exception that httpcore's anyio
backend raises for it, which httpx maps as usual: tests/test_http_transport.py runs every
failure against httpx's own transport too.
"""

# httpcore calls its network backends with `timeout=` keywords: the names are its interface.
# ruff: noqa: ASYNC109

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from typing import Any, cast

import httpcore
import httpx

# Received bytes held for a reader before asyncio stops reading from the socket.
_READ_BUFFER_LIMIT = 2**16


class _Connection(asyncio.Protocol):
    """One TCP connection: what asyncio received on it, and whether it may be written to."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport
        self.received = bytearray()
        self.at_eof = False  # the peer closed, or the connection is lost
        self.error: Exception | None = None  # why it was lost, if not by a clean close
        self.closed = False  # closed by us
        self.reading_paused = False
        self.writing_paused = False
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # As anyio does: a write returns once the kernel has taken all of it, so that the
        # write timeout covers all of a write, not all but the last 64 KiB.
        self.transport.set_write_buffer_limits(0)

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) > _READ_BUFFER_LIMIT and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.at_eof = True
        self._wake_reader()
        return True  # as anyio does: the peer may still read; httpcore closes the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.at_eof = True
        self.error = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()

    async def readable(self, seconds: float | None) -> None:
        self._reader = self.loop.create_future()
        await _wait(self.loop, self._reader, seconds)

    async def drained(self, seconds: float | None) -> None:
        self._writer = self.loop.create_future()
        await _wait(self.loop, self._writer, seconds)

    def _wake_reader(self) -> None:
        waiter, self._reader = self._reader, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter, self._writer = self._writer, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def _wait(
    loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None], seconds: float | None
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


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        connection = self._connection
        if not (connection.received or connection.at_eof or connection.closed):
            try:
                await connection.readable(timeout)
            except TimeoutError as exc:
                raise httpcore.ReadTimeout(exc) from exc
        received = connection.received
        if not received:
            if connection.closed:
                raise httpcore.ReadError("the connection is closed")
            if connection.error is not None:
                raise httpcore.ReadError(connection.error) from connection.error
            return b""  # the peer closed the connection
        data = bytes(received[:max_bytes])
        del received[:max_bytes]
        if connection.reading_paused and len(received) <= _READ_BUFFER_LIMIT:
            connection.reading_paused = False
            connection.transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        connection = self._connection
        self._check_writable()
        connection.transport.write(buffer)
        if connection.writing_paused:
            try:
                await connection.drained(timeout)
            except TimeoutError as exc:
                raise httpcore.WriteTimeout(exc) from exc
            self._check_writable()

    def _check_writable(self) -> None:
        connection = self._connection
        if connection.closed:
            raise httpcore.WriteError("the connection is closed")
        if connection.error is not None:
            raise httpcore.WriteError(connection.error) from connection.error

    async def aclose(self) -> None:
        # As anyio does: at once, dropping what the peer has not taken (a timed-out write's).
        self._connection.closed = True
        self._connection.transport.abort()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        connection = self._connection
        handshake = connection.loop.start_tls(
            connection.transport, connection, ssl_context, server_hostname=server_hostname
        )
        try:
            async with asyncio.timeout(timeout):
                transport = await handshake
        except TimeoutError as exc:
            await self.aclose()
            raise httpcore.ConnectTimeout(exc) from exc
        except OSError as exc:  # ssl.SSLError among them
            await self.aclose()
            raise httpcore.ConnectError(exc) from exc
        if transport is None:  # asyncio's type allows it; its code never returns it
            await self.aclose()
            raise httpcore.ConnectError("the TLS handshake did not complete")
        connection.transport = transport
        connection.transport.set_write_buffer_limits(0)
        return self

    def get_extra_info(self, info: str) -> Any:
        connection = self._connection
        if info == "is_readable":
            # httpcore asks of an idle connection: bytes or the end of the stream wait there.
            return bool(connection.received) or connection.at_eof
        name = {
            "ssl_object": "ssl_object",
            "client_addr": "sockname",
            "server_addr": "peername",
            "socket": "socket",
        }.get(info)
        return None if name is None else connection.transport.get_extra_info(name)


class _Backend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        # httpcore's own backend, for what it does differently from a plain connect:
        # several addresses for one name (raced as RFC 8305 has it), Unix sockets.
        self._anyio = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                address = await _only_address(loop, host, port)
                if address is None:
                    return await self._anyio.connect_tcp(
                        host, port, timeout, local_address, socket_options
                    )
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    address,
                    port,
                    local_addr=None if local_address is None else (local_address, 0),
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.ConnectError(exc) from exc
        sock = connection.transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return _Stream(connection)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._anyio.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _only_address(loop: asyncio.AbstractEventLoop, host: str, port: int) -> str | None:
    """The one address `host` stands for; None for a name with several."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = {str(sockaddr[0]) for *_, sockaddr in found}
    return addresses.pop() if len(addresses) == 1 else None


class AsyncioTransport(httpx.AsyncHTTPTransport):
    """httpx.AsyncHTTPTransport (HTTP/1.1, `limits`, TLS verified against certifi's roots or
    SSL_CERT_FILE), its pool's sockets run by asyncio."""

    def __init__(self, limits: httpx.Limits) -> None:
        ssl_context = httpx.create_ssl_context()
        super().__init__(verify=ssl_context, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_Backend(),
        )
