"""Redis that stops answering without closing anything (a network partition, a frozen VM): each
command is bounded by REDIS_SOCKET_TIMEOUT and never retried after it, the silent connection is
dropped, the rest of the service answers as usual, and it recovers when the network heals."""

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import LIFESPAN_RESOURCES, REDIS_URL, assert_answered_unavailable, serve
from tests.processes import closing_events, stopped_while_silent, worst_case_stop_seconds
from tests.servers import (
    TcpProxy,
    answers,
    async_wait_until,
    proxied_url,
    tcp_proxy_for,
    timed,
)

SOCKET_TIMEOUT, READINESS_TIMEOUT = 1.0, 0.3
# Scheduling and a loaded CI machine; below SOCKET_TIMEOUT, so that a retried command (two
# timeouts) cannot pass for one.
SLACK = 0.4
# A process's own start of shutdown and exit, on a loaded CI machine.
PROCESS_SLACK = 2.0


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with tcp_proxy_for(REDIS_URL, default_port=6379) as proxy:
        yield proxy


def through(proxy: TcpProxy) -> str:
    return proxied_url(REDIS_URL, proxy)


async def test_a_silent_redis_costs_each_request_one_deadline_and_heals_by_itself(
    proxy: TcpProxy, make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    settings = make_settings(
        redis_url=through(proxy),
        redis_socket_timeout=SOCKET_TIMEOUT,
        redis_connect_timeout=0.5,
        readiness_timeout=READINESS_TIMEOUT,
        readiness_cache_seconds=0,
    )
    async with serve(create_app(settings)) as client:
        assert (await client.put("/cache/silent", json={"value": "1"})).status_code == 200

        await asyncio.to_thread(proxy.go_silent)
        first = asyncio.create_task(timed(client.get("/cache/silent")))
        live, live_seconds = await timed(client.get("/health/live"))
        ready, ready_seconds = await timed(client.get("/health/ready"))
        first_response, first_seconds = await first
        # The timed-out connection was dropped: the next command opens a new one (whose
        # handshake the silent server never answers either).
        connections_before = proxy.connections
        second_response, second_seconds = await timed(client.get("/cache/silent"))
        assert proxy.connections > connections_before

        await asyncio.to_thread(proxy.heal)
        recovered_after = await async_wait_until(
            answers(client, "/cache/silent", 200), within=5, message="Redis never recovered"
        )
        await async_wait_until(
            answers(client, "/health/ready", 200), within=5, message="readiness stayed 503"
        )

    assert (live.status_code, ready.status_code) == (200, 503)
    assert live_seconds < 0.25
    assert ready.json()["resources"]["redis"]["error"] == "timeout"
    assert ready_seconds < READINESS_TIMEOUT + SLACK
    assert_answered_unavailable([first_response, second_response], events, "redis")
    for seconds in (first_seconds, second_seconds):
        assert SOCKET_TIMEOUT <= seconds < SOCKET_TIMEOUT + SLACK
    assert recovered_after < 2


def test_sigterm_with_redis_silent_exits_0_within_the_bound(
    proxy: TcpProxy, service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env |= {
        "REDIS_URL": through(proxy),
        "GRACEFUL_SHUTDOWN_TIMEOUT": "1",
        "SHUTDOWN_TIMEOUT": "1",
    }

    seconds, log = stopped_while_silent(service_env, tmp_path, proxy)

    assert seconds < worst_case_stop_seconds(service_env, len(LIFESPAN_RESOURCES)) + PROCESS_SLACK
    assert set(closing_events(log)) == set(LIFESPAN_RESOURCES)
    assert [line for line in log if line["level"] == "error"] == []
