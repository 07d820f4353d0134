"""Real local servers for the tests: an upstream HTTP server, and private Redis and PostgreSQL
servers that a test may stop (by pid) to cause a real outage and start again to end it.

Where the server programs are missing, a test that needs one is skipped with the reason; with
TESTS_REQUIRE_SERVERS=1 in the environment it fails instead, so that a run which must prove the
outage tests (CI, the template's own tests) cannot pass without running them. (No template
syntax in this file: the template's own tests load it as it is.)"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

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
    """Answers every GET with the path and headers it received, as JSON."""

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
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


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung dependency."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port: int = sock.getsockname()[1]
        yield port


# What ends a proxied connection before it reaches the server: the server is unreachable, or the
# proxy closes. (A name, not a tuple in the except clause: ruff formats that differently for
# Python 3.14, which drops the parentheses, than for the older targets.)
CONNECTION_ENDED = (OSError, asyncio.CancelledError)


class TcpProxy:
    """A TCP proxy in front of a real server that can go silent, as a network partition, a
    frozen VM or a dropped conntrack entry do: it stops forwarding bytes either way but closes
    nothing, and takes new connections without ever answering them. Then it can heal. It runs
    its own event loop in a thread, so that it serves an app in the test's loop and a service
    in another process alike."""

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
        await asyncio.gather(self._pipe(client_in, server_out), self._pipe(server_in, client_out))

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


def _postgres_user() -> str | None:
    """Whom to run the PostgreSQL programs as: PostgreSQL refuses to run as root (a compromised
    server would own the machine), and tests in containers often run as root; so then as the
    `postgres` system user. None: as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        cannot_start("running as root without a postgres user: cannot start a private PostgreSQL")
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
