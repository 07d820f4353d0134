"""The shared HTTP client: calls the upstream, carries the request id, maps upstream failures,
and neither waits on a hung upstream nor queues beyond its connection limit."""

import asyncio
import http.client
import importlib.abc
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pytest
from httpx import AsyncClient
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.resources.http_client import open_http_client
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import auth_headers, scrape, serve
from tests.processes import running, wait_until_ready
from tests.servers import (
    MisbehavingUpstream,
    async_wait_until,
    free_port,
    misbehaving_upstream,
    silent_server,
    timed,
)


@pytest.fixture
def upstream() -> Iterator[MisbehavingUpstream]:
    with misbehaving_upstream() as upstream:
        yield upstream


async def test_the_upstream_is_called_with_the_request_id(
    client: AsyncClient, worker_thread_calls: list[str]
) -> None:
    response = await client.get("/upstream/echo/this", headers={"X-Request-ID": "trace-42"})

    assert response.status_code == 200
    reply = response.json()
    assert reply["status_code"] == 200
    upstream_saw = json.loads(reply["body"])
    assert upstream_saw["path"] == "/echo/this"
    headers = {name.lower(): value for name, value in upstream_saw["headers"].items()}
    assert headers["x-request-id"] == "trace-42"
    assert worker_thread_calls == []


class ImportRecorder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> None:
        self.names.append(name)


async def test_each_call_is_logged_once_without_its_query(
    make_settings: Callable[..., Settings], upstream_url: str, events: list[EventDict]
) -> None:
    settings = make_settings(http_client_base_url=upstream_url)
    async with open_http_client(settings, asyncio.get_running_loop().time() + 5) as client:
        await client.get("/echo/logged", params={"token": "not-for-logs"})

    calls = [event for event in events if event["event"] == "http_client.response"]
    assert calls == [
        {
            "event": "http_client.response",
            "log_level": "info",
            "method": "GET",
            "host": "127.0.0.1",
            "path": "/echo/logged",
            "status": 200,
        }
    ]


async def test_a_cookie_one_call_gets_is_not_sent_with_the_next(client: AsyncClient) -> None:
    # The client is shared by every request the service serves: each may be another user's.
    await client.get("/upstream/echo/set-cookie")
    response = await client.get("/upstream/echo/after")

    upstream_saw = json.loads(response.json()["body"])
    assert upstream_saw["path"] == "/echo/after"
    assert "cookie" not in {name.lower() for name in upstream_saw["headers"]}


async def test_a_call_imports_nothing(client: AsyncClient) -> None:
    # An import that is not in sys.modules yet searches sys.path on the event loop: fine once,
    # costly on every call (httpx's own transport looked for sniffio on each, through httpcore).
    await client.get("/upstream/echo/first")
    recorder = ImportRecorder()
    sys.meta_path.insert(0, recorder)
    try:
        response = await client.get("/upstream/echo/second")
    finally:
        sys.meta_path.remove(recorder)

    assert response.status_code == 200
    assert json.loads(response.json()["body"])["path"] == "/echo/second"
    assert recorder.names == []


async def test_an_unreachable_upstream_is_a_502(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(http_client_base_url=f"http://127.0.0.1:{free_port()}")
    async with serve(create_app(settings)) as client:
        response = await client.get("/upstream/anything")

    assert (response.status_code, response.json()) == (502, {"detail": "upstream unreachable"})


async def test_without_a_base_url_the_route_is_a_503(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve(create_app(make_settings(http_client_base_url=None))) as client:
        response = await client.get("/upstream/anything")

    assert response.status_code == 503
    assert response.json() == {"detail": "HTTP_CLIENT_BASE_URL is not set"}


async def test_a_hung_upstream_is_a_504_within_the_timeout(
    make_settings: Callable[..., Settings],
) -> None:
    timeout = 0.5
    with silent_server() as port:
        settings = make_settings(
            http_client_base_url=f"http://127.0.0.1:{port}", http_client_timeout=timeout
        )
        async with serve(create_app(settings)) as client:
            started = time.monotonic()
            response = await client.get("/upstream/anything")
            seconds = time.monotonic() - started

    assert (response.status_code, response.json()) == (504, {"detail": "upstream timed out"})
    assert timeout - 0.05 <= seconds < timeout + 1


async def test_calls_beyond_the_connection_limit_are_503s_not_a_queue(
    make_settings: Callable[..., Settings],
) -> None:
    connections, calls, timeout = 2, 6, 1.0
    with silent_server() as port:
        settings = make_settings(
            http_client_base_url=f"http://127.0.0.1:{port}",
            http_client_timeout=timeout,
            http_client_max_connections=connections,
            http_client_pool_timeout=0.2,
        )
        async with serve(create_app(settings)) as client, asyncio.timeout(timeout + 5):
            responses = await asyncio.gather(
                *(client.get(f"/upstream/{call}") for call in range(calls))
            )

    answers = sorted((response.status_code, response.json()["detail"]) for response in responses)
    # The calls that got a connection wait for the hung upstream; the others are shed at once.
    shed, timed_out = (503, "upstream busy"), (504, "upstream timed out")
    assert answers == [shed] * (calls - connections) + [timed_out] * connections


async def test_pool_figures_follow_the_calls_in_flight(
    make_settings: Callable[..., Settings],
) -> None:
    client_name = {"http_client_name": "http_client"}

    async def active_connections() -> float:
        scraped = await scrape(client)
        return scraped.value(
            "http_client_open_connections", **client_name, http_connection_state="active"
        )

    with silent_server() as port:
        settings = make_settings(
            http_client_base_url=f"http://127.0.0.1:{port}", http_client_timeout=2.0
        )
        async with serve(create_app(settings)) as client:
            calls = [asyncio.create_task(client.get(f"/upstream/{call}")) for call in range(2)]

            async def both_active() -> bool:
                return await active_connections() == 2

            await async_wait_until(both_active, within=2, message="the calls held no connection")
            for call in calls:
                assert (await call).status_code == 504
            active_after = await active_connections()
            limit = (await scrape(client)).value("http_client_connection_max", **client_name)

    assert active_after == 0  # a timed-out connection is closed, not kept
    assert limit == settings.http_client_max_connections


# Each would reach /admin on the upstream if its dot segments were resolved, by the client, the
# upstream or a proxy between them.
PATHS_OUT_OF_THE_BASE_URL = [
    "..%2F..%2Fadmin",
    "%2e%2e/%2e%2e/admin",
    "%252e%252e%252fadmin",
    "%25252e%25252e%25252fadmin",
    "a/../../admin",
    ".%2e/admin",
    "%2E%2E/admin",
    "..\\admin",
    "..%5Cadmin",
]


def get_as_written(port: str, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written: httpx would resolve the dot segments of `a/../..` first."""
    connection = http.client.HTTPConnection("127.0.0.1", int(port))
    try:
        connection.request("GET", path, headers=auth_headers())
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# Each would reach the upstream with a query, a fragment or a path parameter of the caller's
# making if the route sent its path as it reads decoded, or a dot segment by `..;`.
PATHS_SMUGGLING_MORE = {
    "items%3Fadmin=true%26limit=100000": "/api/items%3Fadmin%3Dtrue%26limit%3D100000",
    "items%23top": "/api/items%23top",
    "a%2Fb": "/api/a/b",
    "a;jsessionid=1": "/api/a%3Bjsessionid%3D1",
    "a%3Bv=2/b": "/api/a%3Bv%3D2/b",
    "a%25%33%46b": "/api/a%253Fb",
    "..;/admin": None,
    "a/..;/admin": None,
    "%2e%2e;x/admin": None,
    ".;/admin": None,
    # Once found by fuzzing: a control character, and what reads as an authority.
    "%0D": "/api/%0D",
    "/host:port/x": "/api/host%3Aport/x",
}


def test_no_path_leads_the_upstream_call_out_of_the_base_url(
    service_env: dict[str, str], upstream_url: str, tmp_path: Path
) -> None:
    service_env["HTTP_CLIENT_BASE_URL"] = f"{upstream_url}/api/"
    # Per path: the status, and the path the upstream saw if the call was made.
    outcomes: dict[str, tuple[int, str | None]] = {}
    with running("python -m", service_env, tmp_path) as service:
        wait_until_ready(service, service_env["PORT"])
        for path in [*PATHS_OUT_OF_THE_BASE_URL, *PATHS_SMUGGLING_MORE]:
            status, body = get_as_written(service_env["PORT"], f"/upstream/{path}")
            reached = json.loads(json.loads(body)["body"])["path"] if status == 200 else None
            outcomes[path] = (status, reached)

    # Refused before any call, whatever the upstream would have made of it; or sent as exactly
    # one path under the base URL, with no query, fragment or parameter of the caller's.
    assert outcomes == dict.fromkeys(PATHS_OUT_OF_THE_BASE_URL, (400, None)) | {
        path: (400, None) if reached is None else (200, reached)
        for path, reached in PATHS_SMUGGLING_MORE.items()
    }


def resident_megabytes(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kilobytes = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
    return int(kilobytes) / 1024


def test_a_huge_upstream_body_costs_no_memory(service_env: dict[str, str], tmp_path: Path) -> None:
    with (
        misbehaving_upstream() as upstream,
        running(
            "python -m", {**service_env, "HTTP_CLIENT_BASE_URL": upstream.url}, tmp_path
        ) as service,
    ):
        wait_until_ready(service, service_env["PORT"])
        assert get_as_written(service_env["PORT"], "/upstream/ok")[0] == 200
        before = resident_megabytes(service.process.pid)
        status, body = get_as_written(service_env["PORT"], "/upstream/huge")
        after = resident_megabytes(service.process.pid)

    # The route returns the body's first 1,000 characters and reads little more of its 256 MiB.
    assert (status, json.loads(body)["body"]) == (200, "x" * 1000)
    assert after - before < 16, f"{before:.0f} MB -> {after:.0f} MB"


@pytest.mark.parametrize("path", ["a/b.txt", "a..b", "a/..b/c."])
async def test_paths_with_dots_that_stay_under_the_base_url_pass(
    make_settings: Callable[..., Settings], upstream_url: str, path: str
) -> None:
    settings = make_settings(http_client_base_url=f"{upstream_url}/api/")
    async with serve(create_app(settings)) as client:
        response = await client.get(f"/upstream/{path}")

    assert response.status_code == 200
    assert json.loads(response.json()["body"])["path"] == f"/api/{path}"


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("gzip", 502, None),  # never asked for: it could inflate a thousandfold before the cut
        ("encoded", 200, "plain"),  # an empty Content-Encoding is none
        ("encoded/IDENTITY", 200, "plain"),
        ("charset/utf-7", 200, "+" + "A" * 999),  # no charset of a text body: read as UTF-8
        ("charset/rot13", 200, "+" + "A" * 999),
        ("charset/latin-1", 200, "+" + "A" * 999),
    ],
)
async def test_a_hostile_reply_is_cut_at_a_bounded_cost(
    make_settings: Callable[..., Settings],
    upstream: MisbehavingUpstream,
    path: str,
    status: int,
    body: str | None,
) -> None:
    settings = make_settings(http_client_base_url=upstream.url)
    async with serve(create_app(settings)) as client:
        response = await client.get(f"/upstream/{path}")

    assert response.status_code == status
    assert body is None or response.json()["body"] == body


async def test_a_trickling_upstream_is_a_504_at_the_call_deadline(
    make_settings: Callable[..., Settings], upstream: MisbehavingUpstream
) -> None:
    # A byte every 0.3 s never trips the 0.5 s read timeout: the call's deadline ends it, the
    # pool, connect and read timeouts added up.
    settings = make_settings(
        http_client_base_url=upstream.url,
        http_client_timeout=0.5,
        http_client_connect_timeout=0.5,
        http_client_pool_timeout=0.5,
    )
    async with serve(create_app(settings)) as client:
        response, seconds = await timed(client.get("/upstream/trickle/100/300"))

    assert (response.status_code, response.json()) == (504, {"detail": "upstream timed out"})
    assert 1.5 <= seconds < 1.5 + 1


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("a" * 2049, 414),
        ("%" + "25" * 5 + "2e/admin", 400),  # "." encoded six times over
        ("%25" * 20000 + "41", 414),
    ],
)
async def test_paths_too_long_or_encoded_too_often_are_refused_at_once(
    make_settings: Callable[..., Settings], upstream_url: str, path: str, status: int
) -> None:
    async with serve(create_app(make_settings(http_client_base_url=upstream_url))) as client:
        response, seconds = await timed(client.get(f"/upstream/{path}"))

    assert response.status_code == status
    assert seconds < 0.5
