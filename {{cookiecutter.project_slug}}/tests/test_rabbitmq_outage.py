"""RabbitMQ closing the service's connection, as a broker restart or a load balancer does: the
service connects again by itself, each time, without a restart; readiness turns 200 again,
publishes are confirmed, the consumer handles what is published after, and the connection
gauge is back to 1."""

import asyncio
from collections.abc import Callable, Iterator

import pytest
from httpx import AsyncClient
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import RABBITMQ_URL, scrape, serve
from tests.servers import TcpProxy, answers, async_wait_until, proxied_url, tcp_proxy_for
from tests.test_rabbitmq import logged, publish

CUTS = 3
# aio-pika connects again at once after a loss, but at most once per reconnect_interval (5 s by
# default), counted from the previous connection: cuts in a row wait for that.
RECONNECTED_WITHIN = 5 + 5


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with tcp_proxy_for(RABBITMQ_URL, default_port=5672) as proxy:
        yield proxy


async def test_the_service_connects_again_by_itself_after_each_cut(
    proxy: TcpProxy, make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    settings = make_settings(
        rabbitmq_url=proxied_url(RABBITMQ_URL, proxy), readiness_cache_seconds=0
    )
    handled_after: list[str] = []
    gauges: list[float] = []
    async with serve(create_app(settings)) as client:
        await publish(client, "before the cuts")
        for cut in range(CUTS):
            handled_after.append(await cut_and_recover(proxy, client, events, f"cut {cut}"))
            gauges.append((await scrape(client)).value("rabbitmq_connection_open"))

    assert len(set(handled_after)) == CUTS
    assert gauges == [1.0] * CUTS
    # A new connection after each cut, and the lifespan opened RabbitMQ once: no restart.
    assert proxy.connections == CUTS + 1
    opened = [e["resource"] for e in events if e["event"] == "resource.opened"]
    assert opened.count("rabbitmq") == 1


async def cut_and_recover(
    proxy: TcpProxy, client: AsyncClient, events: list[EventDict], name: str
) -> str:
    """Cut the service's connection; wait until it is connected and ready again, then publish
    a message and wait until the consumer has handled it: its id."""
    opened = proxy.connections
    await asyncio.to_thread(proxy.cut)

    async def connected_again() -> bool:
        return proxy.connections > opened

    await async_wait_until(
        connected_again, within=RECONNECTED_WITHIN, message=f"no new connection after {name}"
    )
    await async_wait_until(
        answers(client, "/health/ready", 200), within=5, message=f"not ready after {name}"
    )
    message_id = await publish(client, f"after {name}")

    async def handled() -> bool:
        return message_id in logged(events, "message.handled")

    await async_wait_until(handled, within=10, message=f"not handled after {name}")
    return message_id
