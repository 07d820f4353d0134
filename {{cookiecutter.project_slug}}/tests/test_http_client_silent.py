"""An upstream that stops answering without closing anything: each call is bounded by
HTTP_CLIENT_TIMEOUT (a 504), the silent connection is not reused, readiness does not follow an
upstream, and calls succeed again when the network heals."""

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import LIFESPAN_RESOURCES, serve
from tests.processes import closing_events, stopped_while_silent, worst_case_stop_seconds
from tests.servers import TcpProxy, answers, async_wait_until, tcp_proxy, timed

TIMEOUT = 1.0
SLACK = 0.4  # scheduling and a loaded CI machine
# A process's own start of shutdown and exit, on a loaded CI machine.
PROCESS_SLACK = 2.0


@pytest.fixture
def proxy(upstream_url: str) -> Iterator[TcpProxy]:
    with tcp_proxy(urlsplit(upstream_url).port or 80) as proxy:
        yield proxy


async def test_a_silent_upstream_costs_each_call_one_timeout_and_heals_by_itself(
    proxy: TcpProxy, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(
        http_client_base_url=f"http://127.0.0.1:{proxy.port}",
        http_client_timeout=TIMEOUT,
        readiness_cache_seconds=0,
    )
    async with serve(create_app(settings)) as client:
        assert (await client.get("/upstream/before")).status_code == 200

        await asyncio.to_thread(proxy.go_silent)
        first = asyncio.create_task(timed(client.get("/upstream/during")))
        live, live_seconds = await timed(client.get("/health/live"))
        ready = await client.get("/health/ready")
        first_response, first_seconds = await first
        connections_before = proxy.connections
        second_response, second_seconds = await timed(client.get("/upstream/during"))
        assert proxy.connections == connections_before + 1

        await asyncio.to_thread(proxy.heal)
        recovered_after = await async_wait_until(
            answers(client, "/upstream/after", 200), within=5, message="calls never recovered"
        )

    assert (live.status_code, ready.status_code) == (200, 200)
    assert live_seconds < 0.25
    for response, seconds in ((first_response, first_seconds), (second_response, second_seconds)):
        assert response.status_code == 504
        assert response.json() == {"detail": "upstream timed out"}
        assert TIMEOUT <= seconds < TIMEOUT + SLACK
    assert recovered_after < 2


def test_sigterm_with_the_upstream_silent_exits_0_within_the_bound(
    proxy: TcpProxy, service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env |= {
        "HTTP_CLIENT_BASE_URL": f"http://127.0.0.1:{proxy.port}",
        "GRACEFUL_SHUTDOWN_TIMEOUT": "1",
        "SHUTDOWN_TIMEOUT": "1",
    }

    seconds, log = stopped_while_silent(service_env, tmp_path, proxy)

    assert seconds < worst_case_stop_seconds(service_env, len(LIFESPAN_RESOURCES)) + PROCESS_SLACK
    assert closing_events(log) == dict.fromkeys(LIFESPAN_RESOURCES, "resource.closed")
