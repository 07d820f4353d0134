"""RabbitMQ: one robust connection for the process, a channel with publisher confirms for the
publishes, a channel of its own for the consumer, and the topology both need, declared at
startup (idempotently: a declaration of what exists with the same arguments changes nothing).

Topology, every name derived from RABBITMQ_QUEUE (q):
- exchange `q` (direct, durable), bound to queue `q` with routing key `q`;
- queue `q`: a quorum queue whose x-delivery-limit dead-letters a message after
  RABBITMQ_MAX_DELIVERIES deliveries that were not acknowledged, to
- exchange `q.dead-letter` (fanout, durable), bound to queue `q.dead-letter` (classic,
  durable): where a message that kept failing waits for a person.
"""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, cast
from urllib.parse import urlsplit

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.connection import make_url

from {{ cookiecutter.package_name }}.metrics import (
    MESSAGES_CONSUMED,
    MESSAGES_IN_FLIGHT,
    MESSAGES_PUBLISHED,
    RABBITMQ_CONNECTION_OPEN,
)
from {{ cookiecutter.package_name }}.resources.lifecycle import (
    ResourceUnavailableError,
    describe,
    doubling_delay,
    lifecycle,
)
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.timing import elapsed_ms

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Topology:
    exchange: str
    queue: str
    dead_letter_exchange: str
    dead_letter_queue: str

    @classmethod
    def of(cls, settings: Settings) -> Self:
        queue = settings.rabbitmq_queue
        dead_letter = f"{queue}.dead-letter"
        return cls(queue, queue, dead_letter, dead_letter)


async def declare(
    channel: AbstractChannel, topology: Topology, max_deliveries: int
) -> AbstractExchange:
    """Declare the topology (idempotent); the exchange the service publishes to."""
    dead_letter_exchange = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    # A classic queue: it only keeps what failed, for a person to look at.
    dead_letter_queue = await channel.declare_queue(topology.dead_letter_queue, durable=True)
    await dead_letter_queue.bind(dead_letter_exchange)
    exchange = await channel.declare_exchange(
        topology.exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    queue = await channel.declare_queue(
        topology.queue, durable=True, arguments=queue_arguments(topology, max_deliveries)
    )
    await queue.bind(exchange, routing_key=topology.queue)
    return exchange


def queue_arguments(topology: Topology, max_deliveries: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        # Returned (nacked, or left unacknowledged by a consumer that went away) this many
        # times after its first delivery, a message is dead-lettered instead.
        "x-delivery-limit": max_deliveries - 1,
        "x-dead-letter-exchange": topology.dead_letter_exchange,
    }


class MessageTracing(Protocol):
    """Spans around publishes and handlers, whose trace context travels in message headers
    (resources/tracing.py, with OpenTelemetry); without tracing, nothing."""

    def publishing(self, headers: dict[str, Any], exchange: str) -> AbstractContextManager[object]:
        """Around a publish; puts the trace context into the message's `headers`."""
        ...

    def handling(
        self, message: AbstractIncomingMessage, queue: str
    ) -> AbstractContextManager[object]:
        """Around a message's handling, in the trace its headers carry."""
        ...


class NoTracing:
    def publishing(self, headers: dict[str, Any], exchange: str) -> AbstractContextManager[object]:
        return contextlib.nullcontext()

    def handling(
        self, message: AbstractIncomingMessage, queue: str
    ) -> AbstractContextManager[object]:
        return contextlib.nullcontext()


class PublishError(Exception):
    """The broker did not confirm the message within RABBITMQ_PUBLISH_TIMEOUT, or refused it."""


class RabbitMQ:
    """The connection, and the publishes with confirms; the lifespan opens and closes it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = Topology.of(settings)
        self.connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        # Set once consuming: readiness also asks whether it still is.
        self.consumer: Consumer | None = None
        self.tracing: MessageTracing = NoTracing()

    async def open(self) -> None:
        """Connect (once) and declare the topology: the startup check, retried by lifecycle."""
        settings = self.settings
        if self.connection is None:
            connection = aio_pika.RobustConnection(
                make_url(
                    settings.rabbitmq_url.get_secret_value(),
                    # A broker that stops answering is given up after 3 x (heartbeat + 1)
                    # seconds without a frame; the connection is then reopened in the background.
                    heartbeat=settings.rabbitmq_heartbeat,
                    # What the broker's connection list shows (aiormq reads `name` from the URL).
                    name=settings.rabbitmq_queue,
                )
            )
            try:
                await connection.connect(timeout=settings.rabbitmq_connect_timeout)
            except BaseException:
                # connect_robust would leave its reconnection task running after a failed first
                # attempt (a wrong password): it retried forever, and the process never exited.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), settings.shutdown_timeout)
                raise
            connection.close_callbacks.add(_connection_lost)
            connection.reconnect_callbacks.add(_connection_restored)
            self.connection = connection
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        self._exchange = await declare(channel, self.topology, settings.rabbitmq_max_deliveries)
        RABBITMQ_CONNECTION_OPEN.set(1)

    async def publish(self, body: bytes, *, message_id: str) -> None:
        """Return once the broker has confirmed the message (persisted in its queue); raise
        PublishError if it has not within RABBITMQ_PUBLISH_TIMEOUT, or refused it."""
        assert self._exchange is not None, "publish before open"
        headers: dict[str, Any] = {}
        try:
            # The deadline also covers waiting for a lost connection to come back: aio-pika's
            # publish waits for that without limit (aio-pika issues #556, #636).
            with self.tracing.publishing(headers, self.topology.exchange):
                message = aio_pika.Message(
                    body,
                    headers=headers,
                    message_id=message_id,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                async with asyncio.timeout(self.settings.rabbitmq_publish_timeout):
                    # mandatory: a message no queue takes is returned, and raises, not dropped.
                    await self._exchange.publish(
                        message, routing_key=self.topology.queue, mandatory=True
                    )
        except Exception as exc:
            outcome = "timeout" if isinstance(exc, TimeoutError) else "failed"
            MESSAGES_PUBLISHED.labels(outcome).inc()
            raise PublishError(describe(exc)) from exc
        MESSAGES_PUBLISHED.labels("ok").inc()

    async def ping(self) -> None:
        """A round trip on the connection: opening a channel and closing it again."""
        if self.connection is None or self.connection.is_closed:
            raise ConnectionError("not connected")
        # Publishes would fail at once while the publishing channel is closed: after a
        # reconnection the connection is back (and the consumer, maybe) a moment before it is.
        publishing = cast(aio_pika.Exchange | None, self._exchange)
        if publishing is None or publishing.channel.is_closed:
            raise ConnectionError("publishing channel closed")
        channel = await self.connection.channel(publisher_confirms=False)
        await channel.close()
        if self.consumer is not None and not await self.consumer.consuming():
            # Messages would wait in the queue, unseen: not ready until the consumer is back.
            raise ConnectionError("not consuming")

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        RABBITMQ_CONNECTION_OPEN.set(0)


def _connection_lost(*_: Any) -> None:
    RABBITMQ_CONNECTION_OPEN.set(0)


def _connection_restored(*_: Any) -> None:
    RABBITMQ_CONNECTION_OPEN.set(1)


def unavailable(exc: PublishError) -> ResourceUnavailableError:
    return ResourceUnavailableError("rabbitmq", str(exc))


@asynccontextmanager
async def open_rabbitmq(settings: Settings, deadline: float) -> AsyncIterator[RabbitMQ]:
    rabbitmq = RabbitMQ(settings)
    parts = urlsplit(settings.rabbitmq_url.get_secret_value())
    async with lifecycle(
        "rabbitmq",
        verify=rabbitmq.open,
        close=rabbitmq.close,
        deadline=deadline,
        close_timeout=settings.shutdown_timeout,
        target={
            "host": parts.hostname,
            "port": parts.port or (5671 if parts.scheme == "amqps" else 5672),
            "vhost": parts.path[1:] or "/",
            "queue": settings.rabbitmq_queue,
        },
    ):
        yield rabbitmq


@dataclass
class Delivery:
    """One delivery of a message, across every call of the handler for it (see
    RetryLaterError): a handler notes here what it did, for its next call."""

    message: AbstractIncomingMessage
    # Unique to this delivery (a delivery tag is unique only on its channel, and channels are
    # reopened): a handler's name for itself, in a claim on the message's id say.
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    work_done: bool = False


# What the consumer runs for each message; it must be idempotent (see messages.py). True: the
# work was done now; False: it had been done before (a redelivery), nothing was done again.
Handler = Callable[[Delivery], Awaitable[bool]]


class UnprocessableMessageError(Exception):
    """Raised by a handler for a message that no retry can help (a body that is no JSON
    object, say): it goes to the dead-letter queue at once."""


class RetryLaterError(Exception):
    """Raised by a handler when the message is fine but something the handler needs is not
    (its store of handled ids does not answer, say). The consumer keeps the message and calls
    the handler again after a pause, instead of returning it to the queue: a return counts as
    a delivery, and an outage would otherwise dead-letter every message in flight."""


class Consumer:
    """Consumes RABBITMQ_QUEUE, at most RABBITMQ_PREFETCH messages at once. A message is
    acknowledged only once its handler succeeded; a failure returns it to the queue, whose
    delivery limit dead-letters it after RABBITMQ_MAX_DELIVERIES deliveries."""

    def __init__(self, rabbitmq: RabbitMQ, handler: Handler) -> None:
        self._rabbitmq = rabbitmq
        self._handler = handler
        self._max_deliveries = rabbitmq.settings.rabbitmq_max_deliveries
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._channel: AbstractChannel | None = None

    async def start(self) -> None:
        assert self._rabbitmq.connection is not None
        channel = await self._rabbitmq.connection.channel()
        await channel.set_qos(prefetch_count=self._rabbitmq.settings.rabbitmq_prefetch)
        # Declared (as at startup, so idempotent) rather than looked up: a robust channel
        # declares again, and consumes again, only the queues declared on it, when it or its
        # connection comes back. Looked up, the queue was consumed by nobody after a reconnect.
        self._queue = await channel.declare_queue(
            self._rabbitmq.topology.queue,
            durable=True,
            arguments=queue_arguments(self._rabbitmq.topology, self._max_deliveries),
        )
        self._tag = await self._queue.consume(self._on_message)
        self._channel = channel
        self._rabbitmq.consumer = self
        log.info("consumer.started", queue=self._queue.name)

    async def consuming(self) -> bool:
        """Whether the broker delivers to this consumer now: its channel open (again), and the
        consumer not cancelled (the broker cancels it when its queue is deleted, say)."""
        if self._channel is None or self._channel.is_closed or self._stopping:
            return False
        underlay = cast(aiormq.Channel, await self._channel.get_underlay_channel())
        return self._tag in underlay.consumers

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            # Delivered while stopping: left unacknowledged, it goes back to the queue when
            # the channel closes, for the next consumer.
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        MESSAGES_IN_FLIGHT.inc()
        try:
            with self._rabbitmq.tracing.handling(message, self._rabbitmq.topology.queue):
                await self._handle(message)
        except Exception as exc:
            # A fault of ours (in tracing, logging) must not leave the message unsettled: it
            # would hold a prefetch slot until the channel closes, and enough of them stop the
            # consumer while readiness says 200.
            log.exception("message.crashed", message_id=message.message_id, error=describe(exc))
            MESSAGES_CONSUMED.labels("rejected").inc()
            await _settle(message.reject(requeue=False), {"message_id": message.message_id})
        finally:
            MESSAGES_IN_FLIGHT.dec()
            self._tasks.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        message_id = message.message_id
        # The broker's count of earlier deliveries that were not acknowledged (quorum queues);
        # on a first delivery the header can only be the publisher's, and is not believed.
        count = message.headers.get("x-delivery-count")
        redelivered = message.redelivered and isinstance(count, int) and count > 0
        delivery = cast(int, count) + 1 if redelivered else 1
        fields = {"message_id": message_id, "delivery": delivery}
        limit = self._rabbitmq.settings.rabbitmq_max_message_bytes
        if not message_id or len(message.body) > limit:
            reason = "no message id" if not message_id else f"larger than {limit} bytes"
            await self._reject(message, reason, fields)
            return
        try:
            done_now = await self._handled_by_and_by(Delivery(message), fields)
        except UnprocessableMessageError as exc:
            await self._reject(message, str(exc), fields)
            return
        except Exception as exc:
            if delivery >= self._max_deliveries:
                outcome, event = "dead_lettered", "message.dead_lettered"
            else:
                outcome, event = "retried", "message.failed"
            retry_in = self._retry_delay(delivery)
            log.warning(event, error=describe(exc), retry_in=retry_in, **fields)
            MESSAGES_CONSUMED.labels(outcome).inc()
            if outcome == "retried":
                # Held meanwhile, so the next delivery comes no sooner (a nack requeues at once).
                await asyncio.sleep(retry_in)
            await _settle(message.nack(requeue=True), fields)
            return
        if done_now:
            log.info("message.handled", duration_ms=elapsed_ms(started), **fields)
            MESSAGES_CONSUMED.labels("handled").inc()
        else:
            log.info("message.duplicate", **fields)
            MESSAGES_CONSUMED.labels("duplicate").inc()
        await _settle(message.ack(), fields)

    async def _reject(
        self, message: AbstractIncomingMessage, reason: str, fields: dict[str, Any]
    ) -> None:
        """To the dead-letter queue at once: no retry can help this message."""
        log.error("message.rejected", reason=reason, **fields)
        MESSAGES_CONSUMED.labels("rejected").inc()
        await _settle(message.reject(requeue=False), fields)

    async def _handled_by_and_by(self, delivery: Delivery, fields: dict[str, Any]) -> bool:
        """The handler's answer, each call within RABBITMQ_HANDLER_TIMEOUT; called again after
        a growing pause for as long as it asks to retry later (until the consumer stops)."""
        timeout = self._rabbitmq.settings.rabbitmq_handler_timeout
        pauses = 0
        while True:
            try:
                async with asyncio.timeout(timeout):
                    return await self._handler(delivery)
            except RetryLaterError as exc:
                pauses += 1
                retry_in = self._retry_delay(pauses)
                log.warning("message.deferred", error=str(exc), retry_in=retry_in, **fields)
                await asyncio.sleep(retry_in)

    def _retry_delay(self, attempt: int) -> float:
        settings = self._rabbitmq.settings
        return doubling_delay(
            attempt, settings.rabbitmq_retry_delay, settings.rabbitmq_retry_delay_max
        )

    async def stop(self, drain_seconds: float) -> None:
        """Stop taking messages, let those being handled finish within `drain_seconds`, cancel
        the rest: unacknowledged, they go back to the queue when the connection closes, as do
        those delivered meanwhile (not handled: see _on_message)."""
        self._stopping = True
        deadline = asyncio.get_running_loop().time() + drain_seconds
        log.info("consumer.draining", in_flight=len(self._tasks), drain_seconds=drain_seconds)
        if self._queue is not None and self._tag is not None:
            # Not waiting for the broker's answer, which a silent broker never gives; and
            # bounded, as a robust channel first waits for a lost connection to come back.
            with contextlib.suppress(Exception):
                async with asyncio.timeout_at(deadline):
                    await self._queue.cancel(self._tag, nowait=True)
        running = list(self._tasks)
        if running:
            _, unfinished = await asyncio.wait(
                running, timeout=max(0.0, deadline - asyncio.get_running_loop().time())
            )
            for task in unfinished:
                task.cancel()
            if unfinished:
                # A handler that ignores its cancellation must not hold the shutdown for ever:
                # its message goes back to the queue with the connection all the same.
                _, ignored = await asyncio.wait(
                    unfinished, timeout=self._rabbitmq.settings.shutdown_timeout
                )
                if ignored:
                    log.error("consumer.handlers_abandoned", handlers=len(ignored))
        log.info("consumer.stopped")


async def _settle(settling: Awaitable[object], fields: dict[str, Any]) -> None:
    """An ack or nack that fails (the connection dropped) leaves the message unacknowledged:
    the broker redelivers it, and the idempotent handler does not do its work twice."""
    try:
        await settling
    except Exception as exc:
        log.warning("message.settle_failed", error=describe(exc), **fields)


@asynccontextmanager
async def consume(rabbitmq: RabbitMQ, handler: Handler) -> AsyncIterator[Consumer]:
    consumer = Consumer(rabbitmq, handler)
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop(rabbitmq.settings.rabbitmq_drain_seconds)
