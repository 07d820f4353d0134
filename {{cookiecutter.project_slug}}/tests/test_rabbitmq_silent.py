"""RabbitMQ that stops answering without closing anything: a publish is a 503 within
RABBITMQ_PUBLISH_TIMEOUT, readiness turns 503, the rest of the service answers as usual, and
it recovers when the network heals."""

import asyncio
from collections.abc import Callable, Iterator

import pytest
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import RABBITMQ_URL, assert_answered_unavailable, serve
from tests.servers import (
    TcpProxy,
    answers,
    async_wait_until,
    proxied_url,
    tcp_proxy_for,
    timed,
)

PUBLISH_TIMEOUT, READINESS_TIMEOUT = 1.0, 0.3
SLACK = 0.5


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with tcp_proxy_for(RABBITMQ_URL, default_port=5672) as proxy:
        yield proxy


def through(proxy: TcpProxy) -> str:
    return proxied_url(RABBITMQ_URL, proxy)


async def test_a_silent_broker_costs_a_publish_one_deadline_and_heals_by_itself(
    proxy: TcpProxy, make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    settings = make_settings(
        rabbitmq_url=through(proxy),
        rabbitmq_publish_timeout=PUBLISH_TIMEOUT,
        readiness_timeout=READINESS_TIMEOUT,
        readiness_cache_seconds=0,
        rabbitmq_drain_seconds=0.5,
        shutdown_timeout=1.0,
    )
    async with serve(create_app(settings)) as client:
        assert (await client.post("/messages", json={"text": "before"})).status_code == 202

        await asyncio.to_thread(proxy.go_silent)
        published = asyncio.create_task(timed(client.post("/messages", json={"text": "silent"})))
        live, live_seconds = await timed(client.get("/health/live"))
        ready, ready_seconds = await timed(client.get("/health/ready"))
        response, seconds = await published

        await asyncio.to_thread(proxy.heal)
        await async_wait_until(
            answers(client, "/health/ready", 200), within=5, message="readiness stayed 503"
        )
        after = await client.post("/messages", json={"text": "after"})

    assert (live.status_code, ready.status_code) == (200, 503)
    assert live_seconds < 0.25
    assert ready.json()["resources"]["rabbitmq"]["error"] == "timeout"
    assert ready_seconds < READINESS_TIMEOUT + SLACK
    assert_answered_unavailable([response], events, "rabbitmq")
    assert PUBLISH_TIMEOUT <= seconds < PUBLISH_TIMEOUT + SLACK
    assert after.status_code == 202
