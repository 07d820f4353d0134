"""RabbitMQ against the real broker: publishes confirmed, every message handled once, failing
messages dead-lettered after their retries, nothing lost at SIGTERM, startup bounded."""

import asyncio
import itertools
import signal
import time
import uuid
{%- if cookiecutter.use_redis %}
from collections.abc import Callable, Iterator
{%- else %}
from collections.abc import Callable
{%- endif %}
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pamqp.encode
import pytest
from httpx import AsyncClient
from structlog.typing import EventDict

from {{ cookiecutter.package_name }} import messages
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.dependencies import RabbitMQClient
from {{ cookiecutter.package_name }}.resources.rabbitmq import RabbitMQ
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import RABBITMQ_URL, Scrape, auth_headers, scrape, serve
from tests.processes import finish, json_lines, running, url, wait_until_ready
{%- if cookiecutter.use_redis %}
from tests.servers import PrivateRedis, async_wait_until, private_redis, wait_until
{%- else %}
from tests.servers import async_wait_until, wait_until
{%- endif %}

RETRY_DELAY = 0.2


def seconds_between(first: dict[str, Any], then: dict[str, Any]) -> float:
    return (
        datetime.fromisoformat(then["timestamp"]) - datetime.fromisoformat(first["timestamp"])
    ).total_seconds()


def logged(events: list[EventDict], event: str) -> list[str]:
    return [e["message_id"] for e in events if e["event"] == event]


async def publish(client: AsyncClient, text: str, message_id: str | None = None) -> str:
    body: dict[str, Any] = {"text": text} | ({"message_id": message_id} if message_id else {})
    response = await client.post("/messages", json=body)
    assert response.status_code == 202, response.text
    published: str = response.json()["message_id"]
    return published


async def test_every_published_message_is_handled(
    settings: Settings, events: list[EventDict]
) -> None:
    async with serve(create_app(settings)) as client:
        published = [await publish(client, f"message {n}") for n in range(20)]

        async def all_handled() -> bool:
            return sorted(logged(events, "message.handled")) == sorted(published)

        await async_wait_until(all_handled, within=10, message="not every message was handled")
        scraped = await scrape(client)

    assert len(set(published)) == 20
    name = "messaging_client_published_messages_total"
    assert scraped.value(name, outcome="ok") >= 20
    assert scraped.value("messaging_client_consumed_messages_total", outcome="handled") >= 20
    assert scraped.value("rabbitmq_connection_open") == 1
    assert scraped.value("messaging_messages_in_flight") == 0


async def test_a_redelivered_message_is_handled_once(
    settings: Settings, events: list[EventDict]
) -> None:
    message_id = uuid.uuid4().hex
    async with serve(create_app(settings)) as client:
        # The broker redelivers a message with its id; a client's retry sends the same id.
        await publish(client, "once", message_id)

        async def handled() -> bool:
            return logged(events, "message.handled") == [message_id]

        await async_wait_until(handled, within=10, message="the message was never handled")
        await publish(client, "once", message_id)

        async def skipped() -> bool:
            return logged(events, "message.duplicate") == [message_id]

        await async_wait_until(skipped, within=10, message="the redelivery was not skipped")

    assert logged(events, "message.handled") == [message_id]


async def dead_lettered(queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """The messages waiting in `queue`'s dead-letter queue, taken (acknowledged)."""
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    async with connection:
        channel = await connection.channel()
        dead_letters = await channel.get_queue(f"{queue}.dead-letter", ensure=False)
        taken = []
        while (message := await dead_letters.get(fail=False, timeout=5)) is not None:
            await message.ack()
            taken.append(message)
        return taken


async def test_a_message_that_keeps_failing_is_dead_lettered_after_its_retries(
    make_settings: Callable[..., Settings],
    events: list[EventDict],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[str] = []
    attempted_at: list[float] = []

    async def failing(payload: dict[str, Any]) -> None:
        attempts.append(payload["text"])
        attempted_at.append(time.monotonic())
        raise RuntimeError("the handler fails")

    monkeypatch.setattr(messages, "process", failing)
    settings = make_settings(rabbitmq_max_deliveries=3, rabbitmq_retry_delay=RETRY_DELAY)
    async with serve(create_app(settings)) as client:
        message_id = await publish(client, "poison")
        taken: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def in_the_dead_letter_queue() -> bool:
            taken.extend(await dead_lettered(settings.rabbitmq_queue))
            return bool(taken)

        await async_wait_until(in_the_dead_letter_queue, within=10, message="not dead-lettered")
        scraped = await scrape(client)

    assert [message.message_id for message in taken] == [message_id]
    assert attempts == ["poison"] * 3
    # Each retry waited RABBITMQ_RETRY_DELAY x 2^(delivery - 1) before it was returned.
    gaps = [then - first for first, then in itertools.pairwise(attempted_at)]
    assert gaps[0] >= RETRY_DELAY
    assert gaps[1] >= 2 * RETRY_DELAY
    assert logged(events, "message.failed") == [message_id] * 2
    assert logged(events, "message.dead_lettered") == [message_id]
    assert logged(events, "message.handled") == []
    consumed = "messaging_client_consumed_messages_total"
    assert scraped.value(consumed, outcome="dead_lettered") >= 1


async def publish_directly(settings: Settings, message: aio_pika.Message) -> None:
    """As another service publishes: to the exchange, any properties and headers."""
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(settings.rabbitmq_queue, ensure=False)
        await exchange.publish(message, routing_key=settings.rabbitmq_queue)


def raw_long_strings(encode_table_value: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """pamqp's encoding of a header value, but bytes go out as a long string as they are,
    UTF-8 or not, as a Java or Go client may send them (RabbitMQ does not check)."""

    def encode(value: Any) -> bytes:
        if isinstance(value, bytes):
            return b"S" + len(value).to_bytes(4, "big") + value
        return encode_table_value(value)

    return encode


async def test_a_publishers_delivery_count_header_is_not_believed(
    settings: Settings, events: list[EventDict]
) -> None:
    message_id = uuid.uuid4().hex
    async with serve(create_app(settings)):
        forged = aio_pika.Message(
            b'{"text": "forged"}', message_id=message_id, headers={"x-delivery-count": 99}
        )
        await publish_directly(settings, forged)

        async def handled() -> bool:
            return logged(events, "message.handled") == [message_id]

        await async_wait_until(handled, within=10, message="the message was never handled")

    [line] = [e for e in events if e["event"] == "message.handled"]
    assert line["delivery"] == 1


async def test_a_header_of_bytes_that_are_no_utf8_holds_up_nothing(
    make_settings: Callable[..., Settings],
    events: list[EventDict],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With tracing, reading the trace context of such a header once failed outside the
    # handler: the message was never settled and held the only prefetch slot for good.
    settings = make_settings(rabbitmq_prefetch=1)
    odd = aio_pika.Message(
        b'{"text": "odd"}', message_id=uuid.uuid4().hex, headers={"blob": b"\xff\xfe\x00"}
    )
    with monkeypatch.context() as patch:
        patch.setattr(
            pamqp.encode,
            "encode_table_value",
            raw_long_strings(pamqp.encode.encode_table_value),
        )
        async with serve(create_app(settings)) as client:
            await publish_directly(settings, odd)
            patch.undo()
            after = await publish(client, "after")

            async def both_settled() -> bool:
                settled = logged(events, "message.handled") + logged(events, "message.crashed")
                return sorted(settled) == sorted([odd.message_id or "", after])

            await async_wait_until(both_settled, within=10, message="the consumer stalled")
            scraped = await scrape(client)

    assert scraped.value("messaging_messages_in_flight") == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "the body is no JSON"),
        (b"\xff\xfe", "the body is no JSON"),
        (b"[1, 2]", "the body is no JSON object"),
        (b'{"text": "' + b"x" * 2048 + b'"}', "larger than 1024 bytes"),
    ],
    ids=["not json", "not utf-8", "not an object", "too large"],
)
async def test_a_message_no_retry_can_help_is_dead_lettered_at_once(
    body: bytes, reason: str, make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    settings = make_settings(rabbitmq_max_message_bytes=1024, rabbitmq_retry_delay=5)
    message_id = uuid.uuid4().hex
    async with serve(create_app(settings)):
        await publish_directly(settings, aio_pika.Message(body, message_id=message_id))

        async def rejected() -> bool:
            return logged(events, "message.rejected") == [message_id]

        await async_wait_until(rejected, within=10, message="the message was not rejected")

    [line] = [e for e in events if e["event"] == "message.rejected"]
    assert (line["reason"], line["delivery"]) == (reason, 1)
    assert logged(events, "message.failed") == []
    assert [m.message_id for m in await dead_lettered(settings.rabbitmq_queue)] == [message_id]


async def test_a_handler_past_its_timeout_has_failed(
    make_settings: Callable[..., Settings],
    events: list[EventDict],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def hanging(payload: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(messages, "process", hanging)
    settings = make_settings(
        rabbitmq_handler_timeout=0.2, rabbitmq_max_deliveries=2, rabbitmq_retry_delay=0.01
    )
    async with serve(create_app(settings)) as client:
        message_id = await publish(client, "slow")

        async def dead_lettered_after_its_timeouts() -> bool:
            return logged(events, "message.dead_lettered") == [message_id]

        await async_wait_until(
            dead_lettered_after_its_timeouts, within=10, message="never dead-lettered"
        )

    failures = [e for e in events if e["event"] in ("message.failed", "message.dead_lettered")]
    assert [failure["error"] for failure in failures] == ["TimeoutError"] * 2
    assert [message.message_id for message in await dead_lettered(settings.rabbitmq_queue)] == [
        message_id
    ]


async def test_a_redelivery_while_the_first_is_handled_waits_and_is_skipped(
    make_settings: Callable[..., Settings],
    events: list[EventDict],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two deliveries of one id at once (a redelivery to a second consumer while the first still
    # works on it; here, a client's retry): the second waits for the first, and is skipped.
    first_may_finish = asyncio.Event()
    calls: list[str] = []

    async def held(payload: dict[str, Any]) -> None:
        calls.append(payload["text"])
        await first_may_finish.wait()

    monkeypatch.setattr(messages, "process", held)
    message_id = uuid.uuid4().hex
    settings = make_settings(rabbitmq_retry_delay=0.05, rabbitmq_max_deliveries=2)
    async with serve(create_app(settings)) as client:
        await publish(client, "first", message_id)
        await publish(client, "second", message_id)

        async def second_deferred() -> bool:
            return len(logged(events, "message.deferred")) >= 3

        await async_wait_until(second_deferred, within=10, message="the second did not wait")
        first_may_finish.set()

        async def second_skipped() -> bool:
            return logged(events, "message.duplicate") == [message_id]

        await async_wait_until(second_skipped, within=10, message="the second was not skipped")

    assert calls == ["first"]
    assert logged(events, "message.handled") == [message_id]
    # Waiting is no failure: no delivery was spent on it, nothing was dead-lettered.
    assert logged(events, "message.failed") == []
    assert await dead_lettered(settings.rabbitmq_queue) == []
{%- if cookiecutter.use_redis %}


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


async def test_an_outage_of_the_handled_ids_store_holds_messages_and_dead_letters_none(
    redis_server: PrivateRedis, make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    settings = make_settings(
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        rabbitmq_retry_delay=0.05,
        rabbitmq_retry_delay_max=0.2,
        rabbitmq_max_deliveries=2,
    )
    async with serve(create_app(settings)) as client:
        await asyncio.to_thread(redis_server.stop)
        published = [await publish(client, f"during the outage {n}") for n in range(3)]

        async def held_past_the_delivery_limit() -> bool:
            deferred = logged(events, "message.deferred")
            return all(deferred.count(message_id) > 3 for message_id in published)

        await async_wait_until(
            held_past_the_delivery_limit, within=15, message="not held while Redis was down"
        )
        await asyncio.to_thread(redis_server.start)

        async def all_handled() -> bool:
            return sorted(logged(events, "message.handled")) == sorted(published)

        await async_wait_until(all_handled, within=15, message="not handled after Redis")

    assert logged(events, "message.failed") == []
    assert await dead_lettered(settings.rabbitmq_queue) == []


async def test_a_delivery_on_a_reopened_channel_is_never_taken_for_another(
    redis_server: PrivateRedis,
    make_settings: Callable[..., Settings],
    events: list[EventDict],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A's work succeeds while Redis is down for its record: A is held. Its channel closes and
    # comes back, where delivery tags start again: B, with A's old tag, was once taken for A's
    # retry and acknowledged with its work never done.
    done: list[str] = []
    a_may_finish = asyncio.Event()

    async def work(payload: dict[str, Any]) -> None:
        done.append(payload["text"])
        if done == ["X", "A"]:
            await a_may_finish.wait()

    monkeypatch.setattr(messages, "process", work)
    settings = make_settings(
        redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
        rabbitmq_prefetch=1,
        rabbitmq_retry_delay=0.2,
        rabbitmq_retry_delay_max=0.5,
        # A claim left by a cancelled holder expires 5 s after this.
        rabbitmq_handler_timeout=1,
    )
    app = create_app(settings)

    @app.post("/test/close-the-consumers-channel")
    async def close_the_consumers_channel(rabbitmq: RabbitMQClient) -> None:
        await ack_the_unknown(rabbitmq)

    def deferred(message_id: str, delivery: int) -> Callable[[], bool]:
        return lambda: any(
            e["event"] == "message.deferred"
            and (e["message_id"], e["delivery"]) == (message_id, delivery)
            for e in events
        )

    async with serve(app) as client:
        await publish(client, "X")  # delivery tag 1
        await async_wait_until(partial(has_handled, events, 1), within=10, message="X")
        a = await publish(client, "A")  # delivery tag 2
        await async_wait_until(partial(is_true, lambda: done == ["X", "A"]), within=10, message="A")
        await asyncio.to_thread(redis_server.stop)
        a_may_finish.set()
        await async_wait_until(partial(is_true, deferred(a, 1)), within=10, message="A held")
        await client.post("/test/close-the-consumers-channel")
        # A again, delivered on the new channel (tag 1 there), and held too.
        await async_wait_until(partial(is_true, deferred(a, 2)), within=15, message="A again")
        await asyncio.to_thread(redis_server.start)
        b = await publish(client, "B")  # tag 2 on the new channel, once A is settled

        async def b_settled() -> bool:
            return b in logged(events, "message.handled") + logged(events, "message.duplicate")

        await async_wait_until(b_settled, within=20, message="B was never settled")

    assert b in logged(events, "message.handled")
    assert done.count("B") == 1
    # A's work once or twice (its record may have been lost with its first delivery).
    assert 1 <= done.count("A") <= 2


async def is_true(condition: Callable[[], bool]) -> bool:
    return condition()


async def in_flight_is(client: AsyncClient, count: int) -> bool:
    return (await scrape(client)).value("messaging_messages_in_flight") == count
{%- endif %}


def test_sigterm_with_messages_in_flight_exits_0_and_loses_none(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env |= {"RABBITMQ_DRAIN_SECONDS": "1", "SHUTDOWN_TIMEOUT": "2"}
    with running("slow app", service_env, tmp_path) as service:
        wait_until_ready(service, service_env["PORT"])
        # Handlers that wait until they are cancelled: in flight when SIGTERM comes.
        ids = [
            httpx.post(
                url(service_env, "/messages"), json={"text": "wait"}, headers=auth_headers()
            ).json()["message_id"]
            for _ in range(3)
        ]

        def all_in_flight() -> bool:
            metrics = Scrape(httpx.get(url(service_env, "/metrics")).text)
            return metrics.value("messaging_messages_in_flight") == 3

        wait_until(all_in_flight, timeout=10, message="the messages were never in flight")
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        returncode, stdout, stderr = finish(service)
        stopped_after = time.monotonic() - signalled

    assert returncode == 0, stderr
    first_run = json_lines(stdout)
    assert [line["event"] for line in first_run if line["event"].startswith("message.")] == []
    assert stopped_after < 10 + 1 + 2 * 2 + 5  # GRACEFUL_SHUTDOWN + drain + closes + slack
    assert RABBITMQ_URL not in stdout + stderr

    # The next run gets them again, and handles them.
    with running("python -m", service_env, tmp_path) as service:

        def all_handled() -> bool:
            handled = [
                line["message_id"] for line in service.log() if line["event"] == "message.handled"
            ]
            return sorted(handled) == sorted(ids)

        wait_until(all_handled, timeout=15, message="the unacknowledged messages were lost")
        service.process.send_signal(signal.SIGTERM)
        returncode, _, stderr = finish(service)
    assert returncode == 0, stderr


def test_a_wrong_url_stops_startup_within_the_timeout_without_the_password(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env |= {
        "RABBITMQ_URL": "amqp://guest:s3cret-wrong@127.0.0.1:5672/",
        "STARTUP_TIMEOUT": "1",
    }
    with running("python -m", service_env, tmp_path) as service:
        returncode, stdout, stderr = finish(service)

    assert returncode != 0
    lines = json_lines(stdout)
    # From the start of the lifespan to its failure: STARTUP_TIMEOUT, and scheduling on a
    # loaded machine (not the process's imports, which come before).
    [waiting] = [line for line in lines if line["event"] == "Waiting for application startup."]
    [failed] = [line for line in lines if line["event"] == "Application startup failed. Exiting."]
    assert seconds_between(waiting, failed) < 1 + 1.5
    failures = [line for line in lines if line["event"] == "resource.open_failed"]
    assert failures
    assert {line["resource"] for line in failures} == {"rabbitmq"}
    [fatal] = [line for line in lines if "ResourceUnavailableError" in line["event"]]
    assert "rabbitmq: not available within the startup timeout" in fatal["event"]
    assert "ACCESS_REFUSED" in fatal["event"].splitlines()[-1]
    assert "s3cret" not in stdout + stderr


async def test_a_consumer_whose_channel_the_broker_closed_consumes_again(
    settings: Settings, events: list[EventDict]
) -> None:
    app = create_app(settings)

    @app.post("/test/ack-the-unknown")
    async def close_the_consumers_channel(rabbitmq: RabbitMQClient) -> None:
        await ack_the_unknown(rabbitmq)

    async with serve(app) as client:
        await publish(client, "before")
        await async_wait_until(
            partial(has_handled, events, 1), within=10, message="the first was never handled"
        )
        await client.post("/test/ack-the-unknown")
        await publish(client, "after")
        await async_wait_until(
            partial(has_handled, events, 2), within=15, message="not consuming after the close"
        )
        ready = await client.get("/health/ready")

    assert ready.status_code == 200, ready.text


async def ack_the_unknown(rabbitmq: RabbitMQ) -> None:
    """An acknowledgement the broker never asked for: it closes the consumer's channel
    (PRECONDITION_FAILED), as it does on a consumer's ack timeout."""
    assert rabbitmq.consumer is not None
    channel = rabbitmq.consumer._channel
    assert channel is not None
    await (await channel.get_underlay_channel()).basic_ack(delivery_tag=424242)


async def has_handled(events: list[EventDict], count: int) -> bool:
    return len(logged(events, "message.handled")) >= count


async def answers_ready(client: AsyncClient) -> bool:
    return (await client.get("/health/ready")).status_code == 200


async def test_topology_is_declared_again_without_error(settings: Settings) -> None:
    # A second service (a new replica, a restart) declares the same topology: no change.
    async with serve(create_app(settings)) as first, serve(create_app(settings)) as second:
        assert (await first.get("/health/ready")).status_code == 200
        assert (await second.get("/health/ready")).status_code == 200
