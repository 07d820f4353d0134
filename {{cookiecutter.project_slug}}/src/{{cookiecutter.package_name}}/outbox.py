"""The transactional outbox: an event is written in the transaction of the change it reports
(`Outbox.add`), so that there is never one without the other, whatever fails when; the relay,
owned by the lifespan, publishes the pending events to RabbitMQ with publisher confirms and
deletes them once confirmed (docs/messages.md, The outbox).

The relay takes a batch with `SELECT ... FOR UPDATE SKIP LOCKED`: the processes and replicas
that relay at once each take other events, and none waits for another. It publishes the batch
concurrently, deletes what the broker confirmed and commits. An event confirmed whose delete
did not commit (the process stopped, the database failed) stays pending and is published again
later: delivery is at least once, and the consumer, which deduplicates on the message id (the
event's id), handles it once.
"""

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import structlog
from sqlalchemy import Row, delete, event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from {{ cookiecutter.package_name }}.metrics import OUTBOX_LAG, OUTBOX_PENDING
from {{ cookiecutter.package_name }}.models import OutboxEvent
from {{ cookiecutter.package_name }}.resources.lifecycle import describe, doubling_delay
from {{ cookiecutter.package_name }}.resources.postgres import dedicated_engine
from {{ cookiecutter.package_name }}.resources.rabbitmq import RabbitMQ
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.timing import elapsed_ms

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Marks a session whose commit wakes the relay: one listener per session, however many events.
_WAKES_THE_RELAY = "outbox.wakes_the_relay"

_MEASURE = select(func.count(), func.min(OutboxEvent.created_at), func.now())


class _StoppingError(Exception):
    """The relay was told to stop while it published: the batch is rolled back."""


class Outbox:
    """What the routes write events to, and the relay that publishes them."""

    def __init__(self, settings: Settings, engine: AsyncEngine, rabbitmq: RabbitMQ) -> None:
        self._engine = engine
        self._rabbitmq = rabbitmq
        self._batch_size = settings.outbox_batch_size
        self._poll_seconds = settings.outbox_poll_seconds
        self._max_backoff_seconds = settings.outbox_max_backoff_seconds
        # The oldest first. SKIP LOCKED: rows another relay holds are left to it, not waited for.
        self._take = (
            select(OutboxEvent.id, OutboxEvent.event_type, OutboxEvent.payload)
            .order_by(OutboxEvent.created_at)
            .limit(self._batch_size)
            .with_for_update(skip_locked=True)
        )
        # Set by a commit that added events, and at stop: the relay looks at once.
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.published = 0

    def add(self, session: AsyncSession, event_type: str, payload: dict[str, Any]) -> uuid.UUID:
        """Add the event to `session`'s transaction; it is published once that commits, and
        never if it does not. Its id is the message id the consumer deduplicates on."""
        outbox_event = OutboxEvent(id=uuid.uuid4(), event_type=event_type, payload=payload)
        session.add(outbox_event)
        if not session.info.get(_WAKES_THE_RELAY):
            session.info[_WAKES_THE_RELAY] = True
            event.listen(session.sync_session, "after_commit", self._committed)
        return outbox_event.id

    def _committed(self, session: Session) -> None:
        self._wake.set()

    async def relay(self) -> None:
        """Publish pending events until told to stop: at once after a commit that added some,
        every OUTBOX_POLL_SECONDS for the rest, after a failure only once the backoff is over."""
        log.info(
            "outbox.relay_started",
            batch_size=self._batch_size,
            poll_seconds=self._poll_seconds,
        )
        failures = 0
        while not self._stop.is_set():
            # Cleared before the pass: a commit during the pass brings another pass.
            self._wake.clear()
            try:
                published = await self._relay_batch()
            except _StoppingError:
                break
            except Exception as exc:
                failures += 1
                backoff = doubling_delay(failures, self._poll_seconds, self._max_backoff_seconds)
                log.warning(
                    "outbox.relay_failed",
                    error=describe(exc),
                    failures=failures,
                    retry_in_seconds=backoff,
                )
                await self._measure()
                # Commits do not cut the backoff short: a broker that is down is not hammered.
                await _wait(self._stop, backoff)
                continue
            failures = 0
            await self._measure()
            if published < self._batch_size:
                await _wait(self._wake, self._poll_seconds)

    async def _relay_batch(self) -> int:
        """One pass: lock a batch, publish it, delete what the broker confirmed, commit. The
        first publish failure is raised after the commit; the rest stay pending."""
        started = time.perf_counter()
        async with self._engine.connect() as connection, connection.begin():
            rows = (await connection.execute(self._take)).all()
            if not rows:
                return 0
            outcomes = await self._unless_stopping(self._publish_all(rows))
            confirmed = [
                row.id for row, outcome in zip(rows, outcomes, strict=True) if outcome is None
            ]
            if confirmed:
                await connection.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(confirmed)))
        self.published += len(confirmed)
        if confirmed:
            log.info("outbox.published", events=len(confirmed), duration_ms=elapsed_ms(started))
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(confirmed)

    async def _publish_all(self, rows: Sequence[Row[Any]]) -> list[BaseException | None]:
        """Each row's publish, concurrently: None when the broker confirmed it, else its error."""
        return await asyncio.gather(*map(self._publish, rows), return_exceptions=True)

    async def _publish(self, row: Row[Any]) -> None:
        body = json.dumps({"type": row.event_type, "data": row.payload}).encode()
        await self._rabbitmq.publish(body, message_id=str(row.id))

    async def _unless_stopping(self, work: Coroutine[Any, Any, T]) -> T:
        """`work`'s result; or, told to stop first, `work` cancelled and _StoppingError raised (the
        transaction then rolls back: its events stay pending for the next relay)."""
        working = asyncio.create_task(work)
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when the relay itself is cancelled (given up at shutdown): nothing left behind.
            stopping.cancel()
            stopped = not working.done()
            if stopped:
                working.cancel()
        if stopped:
            await asyncio.wait({working})
            raise _StoppingError
        return working.result()

    async def _measure(self) -> None:
        """The pending events and the age of the oldest, for the metrics: after each pass, not
        at each scrape. A database that does not answer leaves the last figures."""
        try:
            async with self._engine.connect() as connection:
                pending, oldest, now = (await connection.execute(_MEASURE)).one()
        except Exception as exc:
            log.debug("outbox.measure_failed", error=describe(exc))
            return
        OUTBOX_PENDING.set(pending)
        OUTBOX_LAG.set(max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0)

    def stop(self) -> None:
        self._stop.set()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set, for `seconds` at most."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


@asynccontextmanager
async def run_outbox_relay(settings: Settings, rabbitmq: RabbitMQ) -> AsyncIterator[Outbox]:
    """The outbox, its relay running until the lifespan ends, on a database connection of its
    own: it never waits behind requests, nor holds one of theirs while the broker confirms.
    At shutdown the relay stops and its connection closes within SHUTDOWN_TIMEOUT: a batch
    being published is rolled back and left pending (events the broker confirmed already are
    published again later, and handled once)."""
    engine = dedicated_engine(settings, "outbox relay")
    outbox = Outbox(settings, engine, rabbitmq)
    if not settings.outbox_relay_enabled:
        yield outbox  # an engine opens its connections on first use: this one never does
        return
    relay = asyncio.create_task(outbox.relay(), name="outbox relay")
    try:
        yield outbox
    finally:
        deadline = asyncio.get_running_loop().time() + settings.shutdown_timeout
        outbox.stop()
        done, _ = await asyncio.wait({relay}, timeout=settings.shutdown_timeout)
        if done:
            if not relay.cancelled() and (error := relay.exception()) is not None:
                log.error("outbox.relay_crashed", error=describe(error))
        else:
            # A database silent at this moment: the pass is left behind (its transaction
            # rolls back when the server drops the connection), as background tasks are.
            relay.cancel()
            log.error("outbox.relay_abandoned", timeout_seconds=settings.shutdown_timeout)
        try:
            async with asyncio.timeout_at(deadline):
                await engine.dispose()
        except Exception as exc:
            log.error("outbox.close_failed", error=describe(exc))
        log.info("outbox.relay_stopped", published=outbox.published)
