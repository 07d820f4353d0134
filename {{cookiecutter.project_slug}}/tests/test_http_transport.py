"""The shared HTTP client's transport keeps httpx's own semantics: against a real local upstream
that misbehaves in one way, each test runs the service's client and a plain httpx.AsyncClient
(httpx's own transport) with the same timeouts and limits, and asserts the same outcome of
both, the same exception type for a failure. Then every caller's `except httpx.ReadTimeout`
(and the /upstream route's 502/503/504) holds whatever the transport underneath."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
import uvloop

from {{ cookiecutter.package_name }}.resources.http_client import open_http_client
from {{ cookiecutter.package_name }}.settings import Settings
from tests.servers import (
    Certificates,
    MisbehavingUpstream,
    async_wait_until,
    free_port,
    https_upstream,
    make_certificates,
    misbehaving_upstream,
    silent_server,
    unaccepting_server,
)

TIMEOUT = 0.5
SLACK = 1.0  # scheduling, and copying a large request body, on a loaded CI machine

OpenClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def https_url(certificates: Certificates) -> Iterator[str]:
    with https_upstream(certificates) as url:
        yield url


@pytest.fixture
def upstream() -> Iterator[MisbehavingUpstream]:
    with misbehaving_upstream() as upstream:
        yield upstream


# httpx's own transport is the reference: each test runs with both clients.
@pytest.fixture(params=["service", "httpx"])
def open_client(
    make_settings: Callable[..., Settings], request: pytest.FixtureRequest
) -> OpenClient:
    """Open the service's client, or httpx's with the same settings, calling `base_url`."""
    kind: str = request.param

    @asynccontextmanager
    async def open_(base_url: str, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = make_settings(http_client_base_url=base_url, **overrides)
        if kind == "service":
            deadline = asyncio.get_running_loop().time() + 5
            async with open_http_client(settings, deadline) as client:
                yield client
            return
        if isinstance(asyncio.get_running_loop(), uvloop.Loop):
            # The reference is httpx's own transport on anyio: the service's client is the one
            # whose sockets the loop runs.
            pytest.skip("httpx's own transport is the reference on asyncio's loop")
        async with httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(
                settings.http_client_timeout,
                connect=settings.http_client_connect_timeout,
                pool=settings.http_client_pool_timeout,
            ),
            limits=httpx.Limits(
                max_connections=settings.http_client_max_connections,
                keepalive_expiry=settings.http_client_keepalive_expiry,
            ),
        ) as client:
            yield client

    return open_


def holds(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """`condition` for `async_wait_until`."""

    async def check() -> bool:
        return condition()

    return check


async def failure(call: Awaitable[httpx.Response]) -> tuple[type[BaseException], float]:
    """The exception `call` raised, and the seconds it took to."""
    started = time.monotonic()
    with pytest.raises(httpx.HTTPError) as raised:
        await call
    return raised.type, time.monotonic() - started


async def test_a_refused_connection_is_a_connect_error(open_client: OpenClient) -> None:
    async with open_client(f"http://127.0.0.1:{free_port()}") as client:
        raised, _ = await failure(client.get("/"))

    assert raised is httpx.ConnectError


async def test_a_connection_never_accepted_is_a_connect_timeout(open_client: OpenClient) -> None:
    with unaccepting_server() as port:
        async with open_client(
            f"http://127.0.0.1:{port}", http_client_connect_timeout=TIMEOUT
        ) as client:
            raised, seconds = await failure(client.get("/"))

    assert raised is httpx.ConnectTimeout
    assert TIMEOUT <= seconds < TIMEOUT + SLACK


async def test_no_answer_is_a_read_timeout(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    async with open_client(upstream.url, http_client_timeout=TIMEOUT) as client:
        raised, seconds = await failure(client.get("/hang"))

    assert raised is httpx.ReadTimeout
    assert TIMEOUT <= seconds < TIMEOUT + SLACK


async def test_a_large_body_arrives_whole(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    # Many times what a connection holds in memory before it stops reading from the socket.
    size = 4 * 1024 * 1024
    async with open_client(upstream.url) as client:
        response = await client.get(f"/large/{size}")

    assert response.content == bytes(range(256)) * (size // 256)


async def test_the_read_timeout_bounds_each_read_not_the_whole_body(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    # Five bytes 0.2 s apart: a second in all, twice the timeout, and never a silent 0.5 s.
    async with open_client(upstream.url, http_client_timeout=TIMEOUT) as client:
        started = time.monotonic()
        response = await client.get("/trickle/5/200")
        seconds = time.monotonic() - started

    assert (response.status_code, response.content) == (200, b"xxxxx")
    assert seconds > 2 * TIMEOUT


async def test_a_pause_in_the_body_longer_than_the_read_timeout_is_a_read_timeout(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    async with open_client(upstream.url, http_client_timeout=TIMEOUT) as client:
        raised, seconds = await failure(client.get("/trickle/3/1500"))

    assert raised is httpx.ReadTimeout
    assert TIMEOUT <= seconds < TIMEOUT + SLACK


async def test_a_body_cut_short_is_a_remote_protocol_error(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    async with open_client(upstream.url) as client:
        raised, _ = await failure(client.get("/cut"))

    assert raised is httpx.RemoteProtocolError


async def test_a_body_the_upstream_never_reads_is_a_write_timeout(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    # More than the socket buffers on both sides take in.
    body = b"x" * 16 * 1024 * 1024
    async with open_client(upstream.url, http_client_timeout=TIMEOUT) as client:
        raised, seconds = await failure(client.post("/deaf", content=body))

    assert raised is httpx.WriteTimeout
    assert TIMEOUT <= seconds < TIMEOUT + SLACK


async def test_a_call_finding_every_connection_busy_is_a_pool_timeout(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    async with open_client(
        upstream.url,
        http_client_max_connections=1,
        http_client_pool_timeout=TIMEOUT,
        http_client_timeout=10,
    ) as client:
        holding = asyncio.create_task(client.get("/hang"))
        await async_wait_until(
            holds(lambda: upstream.open_connections == 1), within=5, message="no connection"
        )
        raised, seconds = await failure(client.get("/ok"))
        holding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holding

    assert raised is httpx.PoolTimeout
    assert TIMEOUT <= seconds < TIMEOUT + SLACK


async def test_no_more_connections_than_the_limit_and_they_are_reused(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    limit, calls = 2, 6
    async with open_client(
        upstream.url, http_client_max_connections=limit, http_client_pool_timeout=10
    ) as client:
        responses = [asyncio.create_task(client.get("/stream")) for _ in range(calls)]
        # Every call is waiting: those with a connection for the upstream, the others for one.
        await async_wait_until(
            holds(lambda: upstream.open_connections == limit), within=5, message="no calls"
        )
        upstream.release()
        bodies = [(await response).content for response in responses]

    # Each connection counted as the upstream accepted it: none beyond the two, ever.
    assert bodies == [b"firstlast"] * calls
    assert upstream.accepted == limit


async def test_idle_connections_close_after_the_keepalive_expiry(
    make_settings: Callable[..., Settings], upstream: MisbehavingUpstream
) -> None:
    # What bounds the idle connections a burst leaves (httpx's own transport closes them only at
    # its next call; the service's client has no count limit on them): aiohttp closes each once
    # idle for the expiry, without a further call.
    expiry = 0.3
    settings = make_settings(http_client_base_url=upstream.url, http_client_keepalive_expiry=expiry)
    async with open_http_client(settings, asyncio.get_running_loop().time() + 5) as client:
        responses = await asyncio.gather(*(client.get("/trickle/1/100") for _ in range(4)))
        opened = upstream.accepted
        await async_wait_until(
            holds(lambda: upstream.open_connections == 0),
            within=5,
            message="idle connections stayed open past the keep-alive expiry",
        )

    assert [response.status_code for response in responses] == [200] * 4
    assert opened == 4


async def test_a_connection_idle_past_the_keepalive_expiry_is_not_reused(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    expiry = 0.3
    async with open_client(upstream.url, http_client_keepalive_expiry=expiry) as client:
        await client.get("/ok")
        await client.get("/ok")
        reused = upstream.accepted
        await asyncio.sleep(2 * expiry)  # the idle time is what is under test
        await client.get("/ok")

    assert (reused, upstream.accepted) == (1, 2)


async def test_a_streamed_response_arrives_as_the_upstream_sends_it(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    async with open_client(upstream.url) as client, client.stream("GET", "/stream") as response:
        chunks = response.aiter_raw()
        # The upstream sends the rest only once released: this chunk cannot wait for it.
        first = await anext(chunks)
        upstream.release()
        rest = [chunk async for chunk in chunks]

    assert (first, b"".join(rest)) == (b"first", b"last")


async def test_a_call_over_tls_to_a_trusted_upstream_is_answered(
    open_client: OpenClient,
    certificates: Certificates,
    https_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # httpx trusts the authorities in SSL_CERT_FILE instead of certifi's, as OpenSSL does.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.authority))
    async with open_client(https_url) as client:
        response = await client.get("/over/tls")

    assert response.status_code == 200
    assert response.json()["path"] == "/over/tls"


async def test_an_untrusted_certificate_is_a_connect_error(
    open_client: OpenClient, https_url: str
) -> None:
    async with open_client(https_url) as client:
        raised, _ = await failure(client.get("/"))

    assert raised is httpx.ConnectError


async def test_a_tls_handshake_never_answered_is_a_connect_timeout(open_client: OpenClient) -> None:
    with silent_server() as port:
        async with open_client(
            f"https://127.0.0.1:{port}", http_client_connect_timeout=TIMEOUT
        ) as client:
            raised, seconds = await failure(client.get("/"))

    assert raised is httpx.ConnectTimeout
    assert TIMEOUT <= seconds < TIMEOUT + SLACK


async def test_a_body_that_ends_with_the_connection_arrives_whole(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    async with open_client(upstream.url) as client:
        response = await client.get("/eof")
        again = await client.get("/ok")

    assert (response.content, again.content) == (b"until the end", b"ok")
    assert upstream.accepted == 2


async def test_a_connection_the_upstream_closes_is_not_reused(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    async with open_client(upstream.url) as client:
        # Said in the response, or done after it (a keep-alive timeout ending while idle).
        closing = await client.get("/close")
        closed = await client.get("/ok-then-close")
        await async_wait_until(
            holds(lambda: upstream.open_connections == 0), within=5, message="still open"
        )
        after = await client.get("/ok")

    assert [r.content for r in (closing, closed, after)] == [b"ok"] * 3
    assert upstream.accepted == 3


@pytest.mark.parametrize("path", ["/bye", "/garbage"])
async def test_no_http_answer_is_a_remote_protocol_error(
    open_client: OpenClient, upstream: MisbehavingUpstream, path: str
) -> None:
    async with open_client(upstream.url) as client:
        raised, _ = await failure(client.get(path))

    assert raised is httpx.RemoteProtocolError


async def test_responses_without_a_body_leave_the_connection_reusable(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    async with open_client(upstream.url) as client:
        # HEAD is answered with the length a GET's body would have, and no body.
        responses = [
            await client.head("/ok"),
            await client.get("/empty"),
            await client.get("/continue"),
            await client.get("/ok"),
        ]

    assert [(r.status_code, r.content) for r in responses] == [
        (200, b""),
        (204, b""),
        (200, b"ok"),
        (200, b"ok"),
    ]
    assert upstream.accepted == 1


async def test_a_streamed_request_body_is_sent_in_chunks(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for size in (1, 1000, 100_000):
            yield b"x" * size

    async with open_client(upstream.url) as client:
        response = await client.post("/upload", content=body())

    assert response.content == b"101001"


async def test_a_header_that_would_split_the_request_is_refused(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    async with open_client(upstream.url) as client:
        raised, _ = await failure(client.get("/ok", headers={"x-note": "a\r\nx-injected: 1"}))

    assert raised is httpx.LocalProtocolError


async def test_a_cancelled_call_gives_its_connection_back(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    async with open_client(
        upstream.url, http_client_max_connections=1, http_client_pool_timeout=TIMEOUT
    ) as client:
        hanging = asyncio.create_task(client.get("/hang"))
        await async_wait_until(
            holds(lambda: upstream.open_connections == 1), within=5, message="no connection"
        )
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
        response = await client.get("/ok")

    assert response.content == b"ok"
    assert upstream.accepted == 2  # the cancelled call's connection was in an unknown state


@pytest.mark.parametrize(("method", "sent_again"), [("GET", True), ("POST", False)])
async def test_a_safe_call_the_upstream_hangs_up_on_is_sent_once_more(
    make_settings: Callable[..., Settings],
    upstream: MisbehavingUpstream,
    method: str,
    sent_again: bool,
) -> None:
    # A server closes an idle connection (its keep-alive timeout) just as the next request goes
    # out on it. httpx's own transport raises RemoteProtocolError or ReadError then; the service's
    # sends a request that is safe to repeat once more, on a new connection.
    settings = make_settings(http_client_base_url=upstream.url)
    async with open_http_client(settings, asyncio.get_running_loop().time() + 5) as client:
        await client.get("/ok-then-hang-up")
        call = client.request(method, "/ok")
        if sent_again:
            assert (await call).content == b"ok"
        else:
            raised, _ = await failure(call)
            assert issubclass(raised, (httpx.RemoteProtocolError, httpx.ReadError))

    assert upstream.accepted == (2 if sent_again else 1)


async def test_an_endless_response_head_fails_fast(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    # httpx's own transport gives up at 100 KiB of head, the service's after 128 header lines.
    async with open_client(upstream.url) as client:
        raised, seconds = await failure(client.get("/endless-head"))

    assert raised is httpx.RemoteProtocolError
    assert seconds < SLACK


@pytest.mark.parametrize("path", ["/1xx-body", "/1xx-chunked", "/status-099"])
async def test_a_body_on_an_informational_response_never_reaches_the_final_one(
    open_client: OpenClient, upstream: MisbehavingUpstream, path: str
) -> None:
    # httpx's own transport refuses each. aiohttp reads a 1xx's body as its own, by the 1xx's
    # framing, and drops it with the 1xx: the final answer is the upstream's, untouched.
    async with open_client(upstream.url) as client:
        try:
            response = await client.get(path)
            outcome: object = (response.status_code, response.content)
        except httpx.RemoteProtocolError:
            outcome = httpx.RemoteProtocolError
        following = await client.get("/large/256")

    informational_dropped = path != "/status-099" and outcome == (200, b"ok")
    assert informational_dropped or outcome is httpx.RemoteProtocolError
    assert following.content == bytes(range(256))


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: upstream\r\n\r\n"


async def smuggled_chunks() -> AsyncIterator[bytes]:
    yield b"x" * 10
    yield SMUGGLED


@pytest.mark.parametrize(
    ("method", "content", "headers"),
    [
        pytest.param("POST", SMUGGLED, {"Content-Length": "0"}, id="content-length-0"),
        pytest.param("POST", SMUGGLED, {"Content-Length": "3"}, id="content-length-short"),
        pytest.param("POST", SMUGGLED, {"Transfer-Encoding": "chunked"}, id="bytes-chunked"),
        pytest.param("POST", b"ok", {"Transfer-Encoding": "gzip"}, id="unknown-coding"),
        pytest.param("GET /smuggled HTTP/1.1\r\nX:", None, {}, id="crlf-in-method"),
        pytest.param("POST", "stream", {"Content-Length": "10"}, id="stream-longer"),
        pytest.param("POST", "stream", {"Content-Length": "999"}, id="stream-shorter"),
    ],
)
async def test_a_request_whose_framing_lies_is_refused_before_it_is_sent(
    open_client: OpenClient,
    upstream: MisbehavingUpstream,
    method: str,
    content: bytes | str | None,
    headers: dict[str, str],
    request: pytest.FixtureRequest,
) -> None:
    body = smuggled_chunks() if content == "stream" else content
    async with open_client(upstream.url) as client:
        try:
            await client.request(method, "/body", content=body, headers=headers)
            refused: type[Exception] | None = None
        except Exception as exc:  # h11's own, from httpx's transport
            refused = type(exc)
        after = await client.post("/body", content=b"after")

    if request.node.callspec.params["open_client"] == "service":
        assert refused is httpx.LocalProtocolError
    else:
        # httpx's own transport sends a bytes body under Transfer-Encoding: chunked chunked, and
        # lets h11's LocalProtocolError (no httpx.HTTPError) out for the others.
        assert refused is None or refused.__name__ == "LocalProtocolError"
    # Never a second request on the wire, nor a connection left in a state to carry one.
    assert "GET /smuggled" not in upstream.requests
    assert after.content == b"after"


async def test_a_pool_timeout_as_a_connection_comes_back_hands_it_to_the_next_call(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    async with open_client(
        upstream.url, http_client_max_connections=1, http_client_pool_timeout=5
    ) as client:
        async with client.stream("GET", "/stream") as holding:
            waiting = [asyncio.create_task(client.get("/ok")) for _ in range(2)]
            await asyncio.sleep(0.1)  # both calls queue for the one connection
            upstream.release()
            await holding.aread()
        # The connection is back and handed to the first waiter, which times out at that moment.
        waiting[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting[0]
        second = await asyncio.wait_for(waiting[1], timeout=2)

    assert second.content == b"ok"


async def test_a_streamed_body_with_a_length_arrives_as_sent(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for piece in (b"a", b"bc", b"x" * 100):
            yield piece

    async with open_client(upstream.url) as client:
        response = await client.post("/body", content=body(), headers={"Content-Length": "103"})

    assert response.content == b"abc" + b"x" * 100


@pytest.mark.parametrize("unasked", ["full", "partial"])
async def test_what_an_upstream_sends_on_an_idle_connection_reaches_no_caller(
    open_client: OpenClient, upstream: MisbehavingUpstream, unasked: str
) -> None:
    async with open_client(upstream.url) as client:
        first = await client.get(f"/ok-then-unasked/{unasked}")
        upstream.release()
        await async_wait_until(
            holds(lambda: upstream.unasked == 1), within=5, message="nothing sent unasked"
        )
        second = await client.get("/large/256")

    assert (first.content, second.content) == (b"ok", bytes(range(256)))


@pytest.mark.parametrize("name", ["Content-Length ", "X-A:Transfer-Encoding", "X A", ""])
async def test_a_header_name_that_is_no_token_is_refused(
    open_client: OpenClient, upstream: MisbehavingUpstream, name: str
) -> None:
    async with open_client(upstream.url) as client:
        raised, _ = await failure(client.post("/body", content=b"abc", headers={name: "0"}))

    assert raised is httpx.LocalProtocolError
    assert upstream.requests == []


async def test_a_request_body_that_fails_raises_its_own_exception(
    open_client: OpenClient, upstream: MisbehavingUpstream
) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"abc"
        raise RuntimeError("the caller's own failure")

    async with open_client(upstream.url) as client:
        with pytest.raises(RuntimeError, match="the caller's own failure"):
            await client.post("/body", content=failing())
        after = await client.post("/body", content=b"after")

    assert after.content == b"after"
