"""Real local servers for the tests: an upstream HTTP server, and private Redis and PostgreSQL
servers that a test may stop (by pid) to cause a real outage and start again to end it.

Where the server programs are missing, a test that needs one is skipped with the reason; with
TESTS_REQUIRE_SERVERS=1 in the environment it fails instead, so that a run which must prove the
outage tests (CI, the template's own tests) cannot pass without running them. (No template
syntax in this file: the template's own tests load it as it is.)"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import pwd
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote, unquote, urlsplit

import pytest

if TYPE_CHECKING:
    import httpx

REQUIRE_SERVERS = "TESTS_REQUIRE_SERVERS"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], *, timeout: float, message: str) -> None:
    """Poll `condition()` until it is true; fail the test with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s: {message}")
        time.sleep(0.02)


async def async_wait_until(
    condition: Callable[[], Awaitable[bool]], *, within: float, message: str
) -> float:
    """Await `condition()` until it is true and return the seconds that took; fail the test with
    `message` if that takes longer than `within` seconds."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > within:
            pytest.fail(f"timed out after {within}s: {message}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    """The response, and the seconds it took."""
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


def answers(
    client: httpx.AsyncClient, path: str, status_code: int
) -> Callable[[], Awaitable[bool]]:
    """A condition for `async_wait_until`: GET `path` answers `status_code`."""

    async def condition() -> bool:
        return (await client.get(path)).status_code == status_code

    return condition


def cannot_start(reason: str) -> NoReturn:
    """Skip the test for want of a server program, or fail it where TESTS_REQUIRE_SERVERS is set."""
    if os.environ.get(REQUIRE_SERVERS):
        pytest.fail(f"{reason} ({REQUIRE_SERVERS} is set: the test must run)")
    pytest.skip(reason)


def _accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers every GET with the path and headers it received, as JSON; sets a cookie on
    every path that ends in /set-cookie."""

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        if self.path.endswith("/set-cookie"):
            self.send_header("Set-Cookie", "session=first-caller; Path=/")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@contextmanager
def upstream_server() -> Iterator[str]:
    """An upstream that echoes what it received; yields its URL."""
    with http_server(_EchoHandler) as url:
        yield url


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server answering with `handler`, in a thread; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass(frozen=True)
class Certificates:
    """A certificate authority of the test's own, and a server certificate for 127.0.0.1."""

    authority: Path
    certificate: Path
    key: Path


def make_certificates(directory: Path, names: tuple[str, ...] = ()) -> Certificates:
    """Made with the openssl command line program, as a CA and a server certificate (for
    127.0.0.1 and the DNS `names`) that Python's strict verification (3.13's VERIFY_X509_STRICT)
    accepts."""
    openssl = shutil.which("openssl")
    if openssl is None:
        cannot_start("openssl is not installed: cannot make a TLS certificate")
    ec_key = ["-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    authority, authority_key = directory / "ca.pem", directory / "ca.key"
    certificate, key = directory / "server.pem", directory / "server.key"
    request, extensions = directory / "server.csr", directory / "server.ext"
    extensions.write_text(
        f"subjectAltName={','.join(['IP:127.0.0.1', *(f'DNS:{name}' for name in names)])}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n"
    )
    make_authority = [openssl, "req", "-x509", "-new", *ec_key, "-keyout", authority_key]
    make_authority += ["-out", authority, "-days", "1", "-subj", "/CN=test CA"]
    make_authority += ["-addext", "basicConstraints=critical,CA:TRUE"]
    make_authority += ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    make_request = [openssl, "req", "-new", *ec_key, "-keyout", key, "-out", request]
    make_request += ["-subj", "/CN=127.0.0.1"]
    sign = [openssl, "x509", "-req", "-in", request, "-CA", authority, "-CAkey", authority_key]
    sign += ["-CAcreateserial", "-out", certificate, "-days", "1", "-extfile", extensions]
    for command in (make_authority, make_request, sign):
        subprocess.run([str(part) for part in command], check=True, capture_output=True)
    return Certificates(authority, certificate, key)


@contextmanager
def https_upstream(
    certificates: Certificates, server_names: list[str | None] | None = None
) -> Iterator[str]:
    """The echoing upstream, over TLS with `certificates`; yields its https URL. Each TLS
    handshake's server name (SNI) is added to `server_names`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.certificate, certificates.key)
    if server_names is not None:
        context.sni_callback = lambda _socket, name, _context: server_names.append(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class ForwardProxy:
    """An HTTP forward proxy on plain sockets, as HTTP_PROXY and HTTPS_PROXY name one: a request
    in absolute form (`GET http://host/path`) is passed on to its host, a CONNECT opens a tunnel.
    `seen` lists each request line with its Proxy-Authorization header (or None). A name in
    `hosts` connects to the address given there, so a test can give a made-up name an address.
    A thread per connection; `close` ends them all."""

    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = hosts
        self.seen: list[tuple[str, str | None]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            self._keep(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _serve(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError):
            head = b""
            while b"\r\n\r\n" not in head:
                received = client.recv(65536)
                if not received:
                    return
                head += received
            head, _, rest = head.partition(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, version = request_line.split()
            authorization = next(
                (
                    line.partition(":")[2].strip()
                    for line in header_lines
                    if line.lower().startswith("proxy-authorization:")
                ),
                None,
            )
            with self._lock:
                self.seen.append((f"{method} {target}", authorization))
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                upstream = self._connect(host, int(port))
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                url = urlsplit(target)
                upstream = self._connect(url.hostname or "", url.port or 80)
                origin_form = url.path + (f"?{url.query}" if url.query else "")
                kept = [line for line in header_lines if not line.lower().startswith("proxy-")]
                forwarded = "\r\n".join([f"{method} {origin_form} {version}", *kept])
                upstream.sendall(forwarded.encode("latin-1") + b"\r\n\r\n")
            upstream.sendall(rest)
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
            _pipe(client, upstream)

    def _connect(self, host: str, port: int) -> socket.socket:
        upstream = socket.create_connection((self.hosts.get(host, host), port))
        self._keep(upstream)
        return upstream

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def _pipe(source: socket.socket, destination: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            destination.sendall(data)
        destination.shutdown(socket.SHUT_WR)


@contextmanager
def forward_proxy(hosts: dict[str, str] | None = None) -> Iterator[ForwardProxy]:
    proxy = ForwardProxy(hosts or {})
    try:
        yield proxy
    finally:
        proxy.close()


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung dependency."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port: int = sock.getsockname()[1]
        yield port


@contextmanager
def unaccepting_server() -> Iterator[int]:
    """A port that takes no new connection: its listen backlog is full and nothing accepts, so
    the kernel drops further connection attempts, as a host behind a firewall that drops
    packets does, and a client's connect waits until its own timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        fillers: list[socket.socket] = []
        try:
            # Connect until an attempt is left waiting: then the accept queue is full.
            while len(fillers) < 64:
                filler = socket.socket()
                fillers.append(filler)
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                _, writable, _ = select.select([], [filler], [], 0.5)
                if not writable:
                    break
            else:
                pytest.fail("the listen backlog never filled up")
            yield port
        finally:
            for filler in fillers:
                filler.close()


def _read_body(reader: Any, length: int | None) -> bytes:
    """Read a request body of `length` bytes, or chunked if None."""
    if length is not None:
        body: bytes = reader.read(length)
        return body
    chunks = []
    while size := int(reader.readline(), 16):
        chunks.append(reader.read(size))
        reader.readline()
    reader.readline()  # the empty trailer section
    return b"".join(chunks)


class MisbehavingUpstream:
    """An HTTP/1.1 upstream on plain sockets that misbehaves as each request's path asks, for
    the HTTP client's failure tests. It counts the connections it accepted and those still open
    (closed by the client). A thread per connection; `close` ends them all.

        /ok               200 with a 2-byte body; the connection stays open for the next request
        /large/N          200 with an N-byte body, sent at once
        /hang             reads the request, never answers
        /deaf             reads the request's head, never its body, never answers
        /cut              promises a 100-byte body, sends 10 bytes and closes the connection
        /trickle/N/MS     200 with an N-byte body, one byte every MS milliseconds
        /stream           a chunked body: the first chunk at once, the last after `release()`
        /eof              200 with neither length nor chunks: the body ends as it closes
        /close            200 with `Connection: close`, and closes
        /bye              reads the request, closes without an answer
        /garbage          answers with bytes that are not HTTP
        /continue         100 Continue, then the 200 of /ok
        /empty            204, no body
        /ok-then-hang-up  the 200 of /ok; the next request on the connection is read and closed
                          unanswered, as a server whose keep-alive timeout ends just then does
        /ok-then-close    the 200 of /ok, then closes, as a keep-alive timeout does
        /upload           reads a chunked request body, answers with its length
        /body             reads the request body its Content-Length or chunks frame, answers
                          with it
        /ok-then-unasked/full, /ok-then-unasked/partial
                          the 200 of /ok; once released, an answer nobody asked for on the
                          idle connection (whole, or its head's first bytes); `unasked` counts
        /endless-head     a status line, then header lines without end (a bounded 64 MiB)
        /huge             200 with a 256 MiB body, sent 64 KiB at a time as the client reads
        /gzip             200 with a small gzip-encoded body
        /encoded/NAME     200 with the body `plain` and `Content-Encoding: NAME` (empty without)
        /charset/NAME     200 with 64 KiB of `+AAAA...` said to be text in charset NAME
        /1xx-body         a 199 with a 9-byte body, then the 200 of /ok
        /1xx-chunked      a 199 with a chunked 9-byte body, then the 200 of /ok
        /status-099       a response with status 099, then the 200 of /ok

    `requests` lists each request line read ("GET /ok"): a request smuggled in another's body
    shows there.
    """

    def __init__(self) -> None:
        self._listener = socket.socket()
        # A small receive buffer (the connections inherit it): a request body it never reads
        # fills it, and the client's send buffer behind it, after a few megabytes.
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self.requests: list[str] = []
        self.unasked = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._closing = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def release(self) -> None:
        """Let every /stream response send its last chunk."""
        self._released.set()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                self.accepted += 1
                self._open.add(connection)
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        reader = connection.makefile("rb")
        try:
            # Closed, or sent what is not a request: the connection ends.
            with contextlib.suppress(OSError, ValueError):
                self._serve_requests(connection, reader)
        finally:
            reader.close()
            connection.close()
            # Only once closed: a test that waits for the count sees the connection gone.
            with self._lock:
                self._open.discard(connection)

    def _serve_requests(self, connection: socket.socket, reader: Any) -> None:
        hang_up = False
        while (request := self._read_head(reader)) is not None and not hang_up:
            method, path, length, framing_conflict = request
            with self._lock:
                self.requests.append(f"{method} {path}")
            hang_up = path == "/ok-then-hang-up"
            if method == "HEAD":  # the head of /ok, without its body
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
            elif path == "/body":
                body = _read_body(reader, length)
                # After a request framed both ways, the connection is not to be trusted again.
                closing = b"Connection: close\r\n" if framing_conflict else b""
                head = b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n" % (closing, len(body))
                connection.sendall(head + body)
                if framing_conflict:
                    return
            elif not self._answer(connection, reader, path):
                return

    @staticmethod
    def _read_head(reader: Any) -> tuple[str, str, int | None, bool] | None:
        """The method, path, Content-Length (None: chunked or none) of the next request, and
        whether it says both Content-Length and chunked; None once the client has closed."""
        request_line = reader.readline()
        if not request_line:
            return None
        length, chunked = None, False
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            if name.strip().lower() == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        method, path, _ = request_line.decode(errors="replace").split(maxsplit=2)
        # Transfer-Encoding wins over Content-Length (RFC 9112, 6.3).
        return method, path, None if chunked else length, chunked and length is not None

    def _answer(self, connection: socket.socket, reader: Any, path: str) -> bool:
        """Answer as `path` asks; whether the connection may take another request."""
        step = path.strip("/").split("/")
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        if step[0] in ("ok", "ok-then-hang-up"):
            connection.sendall(ok)
            return True
        if step[0] == "ok-then-close":
            connection.sendall(ok)
            return False
        if step[0] == "eof":
            connection.sendall(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
            return False
        if step[0] == "close":
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
            )
            return False
        if step[0] == "bye":
            return False
        if step[0] == "garbage":
            connection.sendall(b"SPDY/9 banana\r\n\r\n")
            return False
        if step[0] == "continue":
            connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + ok)
            return True
        if step[0] == "empty":
            connection.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
            return True
        if step[0] == "upload":
            length = str(len(_read_body(reader, None))).encode()
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(length)
            connection.sendall(head + length)
            return True
        if step[0] == "large":
            size = int(step[1])
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode()
            connection.sendall(head + bytes(range(256)) * (size // 256))
            return True
        if step[0] == "hang":
            reader.read()  # until the client gives up and closes
            return False
        if step[0] == "deaf":
            self._closing.wait()
            return False
        if step[0] == "cut":
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            return False
        if step[0] == "trickle":
            size, gap = int(step[1]), int(step[2]) / 1000
            connection.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            for _ in range(size):
                if self._closing.wait(gap):  # the pace is the behaviour under test
                    return False
                connection.sendall(b"x")
            return True
        if step[0] == "stream":
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            connection.sendall(head + b"5\r\nfirst\r\n")
            if not self._released.wait(timeout=10):
                return False
            connection.sendall(b"4\r\nlast\r\n0\r\n\r\n")
            return True
        if step[0] == "ok-then-unasked":
            connection.sendall(ok)
            if self._released.wait(timeout=10):
                whole = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nunasked"
                connection.sendall(whole if step[1] == "full" else whole[:20])
                with self._lock:
                    self.unasked += 1
            return True
        if step[0] == "gzip":
            body = gzip.compress(b"\0" * 2**20)
            head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
            connection.sendall(head % len(body) + body)
            return True
        if step[0] == "encoded":
            coding = step[1] if len(step) > 1 else ""
            encoded = f"HTTP/1.1 200 OK\r\nContent-Encoding: {coding}\r\nContent-Length: 5\r\n\r\n"
            connection.sendall(encoded.encode() + b"plain")
            return True
        if step[0] == "charset":
            body = b"+" + b"A" * (2**16 - 1)
            text_head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset={step[1]}\r\n"
            text_head += f"Content-Length: {len(body)}\r\n\r\n"
            connection.sendall(text_head.encode() + body)
            return True
        if step[0] == "huge":
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % 2**28)
            piece = b"x" * 2**16
            for _ in range(2**12):
                connection.sendall(piece)
            return True
        if step[0] == "endless-head":
            connection.sendall(b"HTTP/1.1 200 OK\r\n")
            line = b"X-Filler: " + b"x" * 54 + b"\r\n"
            for _ in range(2**20):  # 64 MiB
                connection.sendall(line * 16)
            return False
        informational = {
            "1xx-body": b"HTTP/1.1 199 Odd\r\nContent-Length: 9\r\n\r\nINJECTED!",
            "1xx-chunked": b"HTTP/1.1 199 Odd\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"9\r\nINJECTED!\r\n0\r\n\r\n",
            "status-099": b"HTTP/1.1 099 Odd\r\n\r\n",
        }
        if step[0] in informational:
            connection.sendall(informational[step[0]] + ok)
            return True
        connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        return True

    def close(self) -> None:
        self._closing.set()
        self._released.set()
        # shutdown() wakes the threads blocked in accept() and recv(); close() alone would not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        acceptor, *_ = self._threads
        acceptor.join(timeout=10)  # then no thread is added any more
        for thread in self._threads:
            thread.join(timeout=10)


@contextmanager
def misbehaving_upstream() -> Iterator[MisbehavingUpstream]:
    upstream = MisbehavingUpstream()
    try:
        yield upstream
    finally:
        upstream.close()


# What ends a proxied connection before it reaches the server: the server is unreachable, or the
# proxy closes. (A name, not a tuple in the except clause: ruff formats that differently for
# Python 3.14, which drops the parentheses, than for the older targets.)
CONNECTION_ENDED = (OSError, asyncio.CancelledError)
# SO_LINGER on, for 0 seconds (struct linger).
_LINGER_0 = struct.pack("ii", 1, 0)


class TcpProxy:
    """A TCP proxy in front of a real server that can go silent, as a network partition, a
    frozen VM or a dropped conntrack entry do: it stops forwarding bytes either way but closes
    nothing, and takes new connections without ever answering them. Then it can heal. It can
    also cut every connection it carries, as a server's restart or a load balancer does. It
    runs its own event loop in a thread, so that it serves an app in the test's loop and a
    service in another process alike."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._flowing = self._call(self._new_event)
        self._server = self._call(
            lambda: asyncio.start_server(self._connect, "127.0.0.1", 0, limit=2**16)
        )
        self.port: int = self._server.sockets[0].getsockname()[1]
        # Connections opened through the proxy so far: a client that replaced one shows here.
        self.connections = 0
        # The connections it carries now: the client's side and the server's side of each.
        self._carried: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    def _call(self, make: Callable[[], Any]) -> Any:
        async def run() -> Any:
            result = make()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    @staticmethod
    def _new_event() -> asyncio.Event:
        event = asyncio.Event()
        event.set()
        return event

    def go_silent(self) -> None:
        self._call(self._flowing.clear)

    def heal(self) -> None:
        self._call(self._flowing.set)

    def cut(self) -> None:
        """Reset every connection it carries, both sides at once (the client and the server
        each see theirs reset); it goes on taking new connections."""

        def reset() -> None:
            for pair in self._carried:
                for writer in pair:
                    # A linger of 0: closing sends a reset (RST), not an orderly FIN.
                    sock = writer.get_extra_info("socket")
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
                    writer.transport.abort()
            self._carried.clear()

        self._call(reset)

    async def _connect(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        try:
            await self._flowing.wait()
            server_in, server_out = await asyncio.open_connection(*self._target)
        except CONNECTION_ENDED:
            client_out.close()
            return
        pair = (client_out, server_out)
        self._carried.add(pair)
        try:
            await asyncio.gather(
                self._pipe(client_in, server_out), self._pipe(server_in, client_out)
            )
        finally:
            self._carried.discard(pair)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await source.read(2**16)
                # Held while silent, like bytes in a partitioned network, the closing one too.
                await self._flowing.wait()
                if not data:
                    break
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        async def shut_down() -> None:
            self._server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._call(shut_down)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@contextmanager
def tcp_proxy(target_port: int, target_host: str = "127.0.0.1") -> Iterator[TcpProxy]:
    proxy = TcpProxy(target_port, target_host)
    try:
        yield proxy
    finally:
        proxy.close()


@contextmanager
def tcp_proxy_for(url: str, default_port: int) -> Iterator[TcpProxy]:
    """A TcpProxy in front of the server of `url`."""
    parts = urlsplit(url)
    with tcp_proxy(parts.port or default_port, parts.hostname or "127.0.0.1") as proxy:
        yield proxy


def proxied_url(url: str, proxy: TcpProxy) -> str:
    """`url`, credentials, path and query included, with the proxy's address."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    address = f"127.0.0.1:{proxy.port}"
    return parts._replace(netloc=f"{credentials}@{address}" if credentials else address).geturl()


@contextmanager
def private_redis(*, password: str | None = None) -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        cannot_start("redis-server is not installed: cannot start a private Redis")
    server = PrivateRedis(binary, free_port(), password)
    try:
        yield server
    finally:
        server.stop()


class PrivateRedis:
    process: subprocess.Popen[bytes]

    def __init__(self, binary: str, port: int, password: str | None) -> None:
        self.port = port
        self._command = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        if password is not None:
            self._command += ["--requirepass", password]
        self.start()

    def start(self) -> None:
        """Start the server, also again after `stop`: same port, but no data (nothing is saved)."""
        self.process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL)
        wait_until(
            lambda: _accepts_connections(self.port),
            timeout=10,
            message=f"redis-server on port {self.port}",
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@contextmanager
def private_postgres(*, password: str | None = None) -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server: trust authentication, or, given a password, password
    (scram-sha-256) authentication, as PostgreSQL's container image and managed servers have."""
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        cannot_start(
            "PostgreSQL server programs not found (pg_config --bindir, /usr/lib/postgresql/*/bin):"
            " cannot start a private PostgreSQL"
        )
    user = _postgres_user()
    # Not pytest's tmp_path, nor TMPDIR when running as root: their parents may be private to
    # root, and the server then runs as the postgres user. /tmp is open to every user.
    base = None if user is None else "/tmp"  # noqa: S108
    with tempfile.TemporaryDirectory(prefix="private-postgres-", dir=base) as directory:
        server = PrivatePostgres(bin_dir, Path(directory), free_port(), user, password)
        try:
            yield server
        finally:
            server.stop()


def _postgres_bin_dir() -> Path | None:
    """Where `initdb` and `postgres` are: pg_config says, else the Debian and Ubuntu layout."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        reply = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
        candidates.insert(0, Path(reply.stdout.strip()))
    # pg_config may come with the client library alone, without the server programs.
    return next((path for path in candidates if (path / "postgres").is_file()), None)


def _postgres_user(server: str = "PostgreSQL") -> str | None:
    """Whom to run the PostgreSQL programs (or PgBouncer) as: they refuse to run as root (a
    compromised server would own the machine), and tests in containers often run as root; so
    then as the `postgres` system user. None: as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        cannot_start(f"running as root without a postgres user: cannot start a private {server}")
    return "postgres"


class PrivatePostgres:
    """A PostgreSQL cluster of its own in `directory` (private to its owner): user and database
    `postgres`, trust authentication or scram with `password`, and durability traded for speed
    (no fsync), as only tests use it."""

    process: subprocess.Popen[bytes]

    def __init__(
        self, bin_dir: Path, directory: Path, port: int, user: str | None, password: str | None
    ) -> None:
        self.port = port
        credentials = "postgres" if password is None else f"postgres:{quote(password, safe='')}"
        self.url = f"postgresql+asyncpg://{credentials}@127.0.0.1:{port}/postgres"
        self._bin_dir = bin_dir
        self._user = user
        self._log = directory / "postgres.log"
        data = str(directory / "data")
        if user is not None:
            # initdb creates the data directory in it, and the server its socket and log.
            shutil.chown(directory, user, user)
        initdb = [str(bin_dir / "initdb"), "-D", data, "--username=postgres"]
        initdb += ["--no-sync", "--encoding=UTF8", "--locale=C"]
        if password is None:
            initdb.append("--auth=trust")
            subprocess.run(initdb, check=True, stdout=subprocess.DEVNULL, user=user)
        else:
            self._initdb_with_password(initdb, directory, password)
        sockets = str(directory)  # not /var/run/postgresql: it may be missing, or not ours
        self._command = [str(bin_dir / "postgres"), "-D", data, "-p", str(port), "-k", sockets]
        self._command += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
        # Each line of the log names its session's application_name: a test reads the lines of
        # the service's request sessions apart from those of its other sessions.
        self._command += ["-c", "log_line_prefix=[%a] "]
        self.start()

    def _initdb_with_password(self, initdb: list[str], directory: Path, password: str) -> None:
        """initdb reads the password from a file: one only its owner can read, in the private
        directory, and gone as soon as initdb has read it."""
        password_file = directory / "password"
        descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(password)
        try:
            if self._user is not None:
                shutil.chown(password_file, self._user, self._user)
            initdb += ["--auth=scram-sha-256", f"--pwfile={password_file}"]
            subprocess.run(initdb, check=True, stdout=subprocess.DEVNULL, user=self._user)
        finally:
            password_file.unlink()

    def start(self) -> None:
        """Start the server, also again after `stop`: same port, same data."""
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(self._command, stderr=log, user=self._user)
        wait_until(self._ready, timeout=30, message=f"postgres on port {self.port}")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            log = self._log.read_text(errors="replace")[-2000:]
            pytest.fail(f"postgres on port {self.port} exited:\n{log}")
        ready = [str(self._bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(ready, check=False).returncode == 0

    def stop(self) -> None:
        if self.process.poll() is None:
            # PostgreSQL's fast shutdown: it ends every session at once, then exits cleanly.
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=30)

    def log_position(self) -> int:
        """Where the server's log ends now, for `log_since`."""
        return self._log.stat().st_size

    def log_since(self, position: int) -> str:
        with self._log.open("rb") as log:
            log.seek(position)
            return log.read().decode(errors="replace")


@contextmanager
def private_pgbouncer(server_url: str, *, pool_size: int = 2) -> Iterator[PrivatePgbouncer]:
    """A private PgBouncer in transaction mode in front of the PostgreSQL server of
    `server_url`, which it logs in to with that URL's user and password (a password is never
    needed to reach PgBouncer itself). At most `pool_size` server connections per database."""
    # Debian's package installs it in /usr/sbin, which is on root's PATH only.
    binary = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if binary is None:
        cannot_start("pgbouncer is not installed: cannot start a private PgBouncer")
    user = _postgres_user("PgBouncer")
    base = None if user is None else "/tmp"  # noqa: S108  (as for private_postgres)
    with tempfile.TemporaryDirectory(prefix="private-pgbouncer-", dir=base) as directory:
        server = PrivatePgbouncer(binary, Path(directory), server_url, pool_size, user)
        try:
            yield server
        finally:
            server.stop()


class PrivatePgbouncer:
    """PgBouncer's own configuration in `directory`: every database of the server, each client
    logging in as `CLIENT_USER` without a password (auth_type trust), each transaction handed
    to whichever server connection is free."""

    CLIENT_USER = "service"
    process: subprocess.Popen[bytes]

    def __init__(
        self, binary: str, directory: Path, server_url: str, pool_size: int, user: str | None
    ) -> None:
        self.port = free_port()
        self._log = directory / "pgbouncer.log"
        server = urlsplit(server_url)
        # A libpq-like connection string: a value in single quotes, a quote in it doubled.
        target = {
            "host": server.hostname or "127.0.0.1",
            "port": str(server.port or 5432),
            "user": unquote(server.username or "postgres"),
        }
        if server.password is not None:
            target["password"] = unquote(server.password)
        connection = " ".join(
            f"{key}='{value.replace(chr(39), chr(39) * 2)}'" for key, value in target.items()
        )
        users = directory / "users.txt"
        users.write_text(f'"{self.CLIENT_USER}" ""\n')
        config = directory / "pgbouncer.ini"
        config.write_text(
            f"[databases]\n* = {connection}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {users}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\n"
            f"logfile = {self._log}\n"
        )
        if user is not None:
            # It reads its files, and writes its log, as that user; the password stays private.
            for path in (directory, users, config):
                shutil.chown(path, user, user)
            config.chmod(0o600)
        self._command = [binary, str(config)]
        self._user = user
        self.start()

    def url(self, database: str) -> str:
        """The URL a client gives to reach `database` through PgBouncer."""
        return f"postgresql+asyncpg://{self.CLIENT_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=self._user
        )
        wait_until(self._ready, timeout=10, message=f"pgbouncer on port {self.port}")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            log = self._log.read_text(errors="replace")[-2000:] if self._log.exists() else ""
            pytest.fail(f"pgbouncer on port {self.port} exited:\n{log}")
        return _accepts_connections(self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: PgBouncer's immediate shutdown
            self.process.wait(timeout=10)
