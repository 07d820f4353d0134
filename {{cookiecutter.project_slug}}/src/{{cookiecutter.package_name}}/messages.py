"""The example consumer's handler: idempotent, so that a redelivered message is handled once.

RabbitMQ delivers at least once: a message whose acknowledgement never reached the broker (the
connection dropped, the process stopped) is delivered again. The handler remembers the ids of
the messages it handled and skips them: effectively-once handling, within what the store of
ids guarantees (README: Messages).
"""

import json
{%- if not cookiecutter.use_redis %}
from collections import OrderedDict
{%- endif %}
from typing import Any, Protocol

import structlog
from aio_pika.abc import AbstractIncomingMessage
{%- if cookiecutter.use_redis %}
from redis.asyncio import Redis
{%- endif %}

log = structlog.get_logger(__name__)
{%- if cookiecutter.use_redis %}

# How long a handled message's id is remembered: far longer than any redelivery takes.
HANDLED_TTL_SECONDS = 24 * 60 * 60
{%- else %}

# How many handled message ids the process remembers (the oldest are forgotten first).
HANDLED_IDS_KEPT = 100_000
{%- endif %}


class HandledIds(Protocol):
    async def seen(self, message_id: str) -> bool: ...

    async def remember(self, message_id: str) -> None: ...
{%- if cookiecutter.use_redis %}


class RedisHandledIds:
    """In Redis, under REDIS_KEY_PREFIX, for HANDLED_TTL_SECONDS: shared by every process and
    replica, and kept across restarts."""

    def __init__(self, redis: Redis, key_prefix: str) -> None:
        self._redis = redis
        self._prefix = key_prefix + "messages:handled:"

    async def seen(self, message_id: str) -> bool:
        return bool(await self._redis.exists(self._prefix + message_id))

    async def remember(self, message_id: str) -> None:
        await self._redis.set(self._prefix + message_id, "1", ex=HANDLED_TTL_SECONDS)
{%- else %}


class MemoryHandledIds:
    """In this process only, the last HANDLED_IDS_KEPT ids: a redelivery to another replica,
    or after a restart, is handled again."""

    def __init__(self) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()

    async def seen(self, message_id: str) -> bool:
        return message_id in self._ids

    async def remember(self, message_id: str) -> None:
        self._ids[message_id] = None
        if len(self._ids) > HANDLED_IDS_KEPT:
            self._ids.popitem(last=False)
{%- endif %}


async def process(payload: dict[str, Any]) -> None:
    """The work a message asks for: here, nothing but the log line the consumer writes."""


async def handle(message: AbstractIncomingMessage, handled: HandledIds) -> bool:
    """True: handled now; False: it was handled before (a redelivery), and is skipped."""
    message_id = message.message_id
    assert message_id is not None  # the consumer rejects messages without one
    if await handled.seen(message_id):
        return False
    await process(json.loads(message.body))
    # Only after the work succeeded: a failure leaves the message to be retried. A crash
    # between the two lines does the work again on redelivery (README: Messages).
    await handled.remember(message_id)
    return True
