"""The example consumer's handler: idempotent, so that a redelivered message is handled once.

RabbitMQ delivers at least once: a message whose acknowledgement never reached the broker (the
connection dropped, the process stopped) is delivered again, possibly to another replica while
the first still works on it. Before its work the handler claims the message's id, atomically;
after it, marks the id done. A delivery of an id that is done is skipped, one whose id another
handler holds waits until that one finished or gave up: effectively-once handling, within what
the store of ids guarantees (docs/messages.md).
"""

import json
{%- if not cookiecutter.use_redis %}
from collections import OrderedDict
{%- endif %}
from enum import Enum
from typing import Any, Protocol

import structlog
from aio_pika.abc import AbstractIncomingMessage
{%- if cookiecutter.use_redis %}
from redis.asyncio import Redis
from redis.exceptions import RedisError
{%- endif %}

from {{ cookiecutter.package_name }}.resources.rabbitmq import (
    Delivery,
    RetryLaterError,
    UnprocessableMessageError,
)

log = structlog.get_logger(__name__)
{%- if cookiecutter.use_redis %}

# How long a handled message's id is remembered: far longer than any redelivery takes.
HANDLED_TTL_SECONDS = 24 * 60 * 60
# A claim outlives the handler's timeout by this much (the round trips around the work).
CLAIM_MARGIN_SECONDS = 5
DONE = "done"
{%- else %}

# How many handled message ids the process remembers (the oldest are forgotten first).
HANDLED_IDS_KEPT = 100_000
{%- endif %}


class Claim(Enum):
    MINE = "mine"  # handle it now
    DONE = "done"  # handled before: skip it
    TAKEN = "taken"  # another handler holds it: try again later


class HandledIds(Protocol):
    async def claim(self, message_id: str, holder: str) -> Claim: ...

    async def done(self, message_id: str) -> None: ...

    async def release(self, message_id: str, holder: str) -> None: ...


class ClaimTakenError(RetryLaterError):
    """Another handler holds the message's id (a redelivery while it still works on it)."""
{%- if cookiecutter.use_redis %}


class HandledIdsUnavailableError(RetryLaterError):
    """The store of handled ids did not answer: the message is not at fault."""


class RedisHandledIds:
    """In Redis, under REDIS_KEY_PREFIX: shared by every process and replica, and kept across
    restarts. A claim is the holder's name, set only where no value is (SET NX); it expires
    CLAIM_MARGIN_SECONDS after the handler's timeout, so that a process that died holding one
    does not hold it for ever. A handled id is `done` for HANDLED_TTL_SECONDS."""

    def __init__(self, redis: Redis, key_prefix: str, handler_timeout: float) -> None:
        self._redis = redis
        self._prefix = key_prefix + "messages:handled:"
        self._claim_ms = round((handler_timeout + CLAIM_MARGIN_SECONDS) * 1000)

    async def claim(self, message_id: str, holder: str) -> Claim:
        key = self._prefix + message_id
        try:
            if await self._redis.set(key, holder, nx=True, px=self._claim_ms):
                return Claim.MINE
            value = await self._redis.get(key)
        except RedisError as exc:
            raise HandledIdsUnavailableError(str(exc)) from exc
        if value == DONE:
            return Claim.DONE
        # Ours already: an earlier attempt whose answer was lost (a Redis timeout) set it.
        return Claim.MINE if value == holder else Claim.TAKEN

    async def done(self, message_id: str) -> None:
        try:
            await self._redis.set(self._prefix + message_id, DONE, ex=HANDLED_TTL_SECONDS)
        except RedisError as exc:
            raise HandledIdsUnavailableError(str(exc)) from exc

    async def release(self, message_id: str, holder: str) -> None:
        # Best effort: a claim left behind expires by itself.
        key = self._prefix + message_id
        try:
            if await self._redis.get(key) == holder:
                await self._redis.delete(key)
        except RedisError as exc:
            log.warning("message.release_failed", message_id=message_id, error=str(exc))
{%- else %}


class MemoryHandledIds:
    """In this process only, the last HANDLED_IDS_KEPT handled ids: a redelivery to another
    replica, or after a restart, is handled again."""

    def __init__(self) -> None:
        self._done: OrderedDict[str, None] = OrderedDict()
        self._claims: dict[str, str] = {}

    async def claim(self, message_id: str, holder: str) -> Claim:
        if message_id in self._done:
            return Claim.DONE
        if self._claims.setdefault(message_id, holder) != holder:
            return Claim.TAKEN
        return Claim.MINE

    async def done(self, message_id: str) -> None:
        self._claims.pop(message_id, None)
        self._done[message_id] = None
        if len(self._done) > HANDLED_IDS_KEPT:
            self._done.popitem(last=False)

    async def release(self, message_id: str, holder: str) -> None:
        if self._claims.get(message_id) == holder:
            del self._claims[message_id]
{%- endif %}


async def process(payload: dict[str, Any]) -> None:
    """The work a message asks for: here, nothing but the log line the consumer writes."""


class IdempotentHandler:
    """What the consumer runs for each message: claims its id, does the work, marks it done.

    A RetryLaterError (the store does not answer, another handler holds the id) makes the
    consumer call it again for the same delivery later; the work, once it succeeded, is not
    done again for that delivery: only its record is retried."""

    def __init__(self, handled: HandledIds) -> None:
        self._handled = handled

    async def __call__(self, delivery: Delivery) -> bool:
        """True: handled now; False: it was handled before (a redelivery), and is skipped."""
        message_id = delivery.message.message_id
        assert message_id is not None  # the consumer rejects messages without one
        if not delivery.work_done:
            if not await self._do_once(delivery, message_id):
                return False
            delivery.work_done = True
        # A crash before this line does the work again on redelivery, once the claim
        # expired (docs/messages.md).
        await self._handled.done(message_id)
        return True

    async def _do_once(self, delivery: Delivery, message_id: str) -> bool:
        claim = await self._handled.claim(message_id, delivery.id)
        if claim is Claim.DONE:
            return False
        if claim is Claim.TAKEN:
            raise ClaimTakenError(f"message {message_id} is being handled elsewhere")
        try:
            await process(payload_of(delivery.message))
        except BaseException:
            await self._handled.release(message_id, delivery.id)
            raise
        return True


def payload_of(message: AbstractIncomingMessage) -> dict[str, Any]:
    try:
        payload = json.loads(message.body)
    except ValueError:  # no UTF-8, or no JSON
        raise UnprocessableMessageError("the body is no JSON") from None
    if not isinstance(payload, dict):
        raise UnprocessableMessageError("the body is no JSON object")
    return payload
