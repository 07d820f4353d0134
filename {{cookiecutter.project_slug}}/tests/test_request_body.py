"""Request bodies over MAX_REQUEST_BODY_BYTES are refused with a 413, declared or chunked,
before they are read into memory."""

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import Body, FastAPI, Request
from httpx import AsyncClient
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import serve
from tests.processes import running, url, wait_until_ready

LIMIT = 1024
CHUNK = 256
TOO_LARGE = {"detail": f"request body too large: the limit is {LIMIT} bytes"}


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(max_request_body_bytes=LIMIT)


class Chunks:
    """A request body of `total` bytes, made as it is sent; counts the chunks taken from it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.taken = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.total:
            chunk = b"x" * min(CHUNK, self.total - sent)
            self.taken += 1
            sent += len(chunk)
            yield chunk


def add_body_routes(app: FastAPI) -> list[str]:
    """Two routes that read a whole body: one as bytes, one as a JSON value (FastAPI reads that
    before it calls the route). Returns the names of the routes called."""
    called: list[str] = []

    @app.post("/test/bytes")
    async def read_bytes(request: Request) -> int:
        called.append("bytes")
        return len(await request.body())

    @app.post("/test/json")
    async def read_json(text: Annotated[str, Body()]) -> int:
        called.append("json")
        return len(text)

    return called


async def test_a_declared_length_over_the_limit_is_refused_unread(
    app: FastAPI, client: AsyncClient
) -> None:
    called = add_body_routes(app)
    body = Chunks(LIMIT + 1)

    response = await client.post(
        "/test/bytes", content=body, headers={"Content-Length": str(LIMIT + 1)}
    )

    assert (response.status_code, response.json()) == (413, TOO_LARGE)
    assert response.headers["Connection"] == "close"
    assert "X-Request-ID" in response.headers
    assert (called, body.taken) == ([], 0)


@pytest.mark.parametrize("route", ["bytes", "json"])
async def test_a_chunked_body_is_cut_off_once_over_the_limit(
    app: FastAPI, client: AsyncClient, route: str
) -> None:
    called = add_body_routes(app)
    body = Chunks(1000 * CHUNK)  # sent without a Content-Length: its size is unknown up front

    response = await client.post(
        f"/test/{route}", content=body, headers={"Content-Type": "application/json"}
    )

    assert (response.status_code, response.json()) == (413, TOO_LARGE)
    assert response.headers["Connection"] == "close"
    # The first chunk past the limit was the last one read.
    assert body.taken == LIMIT // CHUNK + 1
    assert called == (["bytes"] if route == "bytes" else [])


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "chunked"])
@pytest.mark.parametrize(("size", "status_code"), [(LIMIT, 200), (LIMIT + 1, 413)])
async def test_a_body_of_exactly_the_limit_passes_and_one_byte_more_does_not(
    app: FastAPI, client: AsyncClient, declared: bool, size: int, status_code: int
) -> None:
    add_body_routes(app)
    headers = {"Content-Length": str(size)} if declared else {}

    response = await client.post("/test/bytes", content=Chunks(size), headers=headers)

    assert response.status_code == status_code
    if status_code == 200:
        assert response.json() == size


class AnswersWithTheBodyLength:
    """A middleware that reads the whole body itself, like a signature check: inside the
    request context middleware, but outside the app's exception handling."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, more_body = 0, True
        while more_body:
            message = await receive()
            length += len(message.get("body", b""))
            more_body = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(length).encode()})


@pytest.mark.parametrize(("size", "status_code"), [(LIMIT, 200), (100 * LIMIT, 413)])
async def test_a_body_read_outside_the_apps_exception_handling_is_refused_too(
    app: FastAPI, size: int, status_code: int
) -> None:
    app.user_middleware.append(Middleware(AnswersWithTheBodyLength))  # the innermost one
    async with serve(app) as client:
        response = await client.post("/anything", content=Chunks(size))

    assert response.status_code == status_code
    assert response.json() == (size if status_code == 200 else TOO_LARGE)


def peak_rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    kilobytes = int(line.split()[1])
    return kilobytes * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_a_huge_chunked_body_leaves_the_memory_of_the_service_flat(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    huge = 64 * 1024 * 1024  # with the default limit of 1 MiB
    block = b"x" * (64 * 1024)

    def blocks(total: int) -> Iterator[bytes]:
        for _ in range(total // len(block)):
            yield block

    with running("slow app", service_env, tmp_path) as service:
        wait_until_ready(service, service_env["PORT"])
        # Once over the limit before measuring, so that what that costs once is not counted.
        warm_up = httpx.post(url(service_env, "/test/body"), content=blocks(2 * 1024 * 1024))
        before = peak_rss_bytes(service.process.pid)
        response = httpx.post(url(service_env, "/test/body"), content=blocks(huge), timeout=30)
        grown = peak_rss_bytes(service.process.pid) - before

    assert grown < 20 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.1f} MiB"
    assert warm_up.status_code == response.status_code == 413
