"""The PostgreSQL connection pool: SQLAlchemy's, first come first served, and timed."""

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.util import await_
from sqlalchemy.util.queue import Empty, Full, QueueCommon

from {{ cookiecutter.package_name }}.metrics import DB_POOL_PENDING, DB_POOL_TIMEOUTS, DB_POOL_WAIT

POOL_NAME = "postgres"


class FirstComeQueue(QueueCommon[ConnectionPoolEntry]):
    """The pool's idle connections, each one given back handed straight to the caller that has
    waited longest.

    SQLAlchemy's own queue for asyncio is an `asyncio.Queue`: a connection given back stays in
    it until the waiter it wakes gets to run, and a request that arrives meanwhile takes it; the
    waiter then finds the queue empty and joins the end of the line again. With more requests
    than connections a few of them lose over and over, and the slowest reads under load take
    several times the median (cpython's gh-83055 discusses `asyncio.Queue`'s fairness).
    """

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        self.maxsize = maxsize
        self.use_lifo = use_lifo
        self._idle: deque[ConnectionPoolEntry] = deque()
        self._waiters: deque[asyncio.Future[ConnectionPoolEntry]] = deque()

    def empty(self) -> bool:
        return not self._idle

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._idle)

    def qsize(self) -> int:
        return len(self._idle)

    def put_nowait(self, item: ConnectionPoolEntry) -> None:
        if self._handed_to_a_waiter(item):
            return
        if self.full():
            raise Full
        self._idle.append(item)

    def _handed_to_a_waiter(self, item: ConnectionPoolEntry) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return True
        return False

    def put(
        self, item: ConnectionPoolEntry, block: bool = True, timeout: float | None = None
    ) -> None:
        # The pool never gives back more connections than it made: a put never has to wait.
        self.put_nowait(item)

    def get_nowait(self) -> ConnectionPoolEntry:
        if not self._idle:
            raise Empty
        return self._idle.pop() if self.use_lifo else self._idle.popleft()

    def get(self, block: bool = True, timeout: float | None = None) -> ConnectionPoolEntry:
        if self._idle or not block:
            return self.get_nowait()
        return await_(self._wait(seconds=timeout))

    async def _wait(self, seconds: float | None) -> ConnectionPoolEntry:
        waiter: asyncio.Future[ConnectionPoolEntry] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(seconds):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed a connection just as the wait ended (timed out, or the request was
                # cancelled): it goes to the next in line, or back among the idle ones even if
                # another came back meanwhile and they are `maxsize` already. Never `Full`:
                # SQLAlchemy would neither close nor uncount the connection, and the caller
                # would get that instead of its own exception.
                item = waiter.result()
                if not self._handed_to_a_waiter(item):
                    self._idle.append(item)
            else:
                waiter.cancel()
                # Gone already if a connection came back meanwhile and passed it over.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise Empty from None
            raise


class MeteredPool(AsyncAdaptedQueuePool):
    """SQLAlchemy's pool with a first-come queue, timing each wait for a connection: SQLAlchemy
    counts the connections (read at scrape time) but not who waits, nor for how long."""

    _queue_class = FirstComeQueue
    # SQLAlchemy names a pool's logger after its class: under our package it would log its
    # INFO chatter ("Pool disposed", ...) at our LOG_LEVEL rather than at SQLAlchemy's WARNING.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit = self.size() + kwargs["max_overflow"]
        # Looked up once: labels() costs more than the observations on every checkout.
        self._pending = DB_POOL_PENDING.labels(POOL_NAME)
        self._timeouts = DB_POOL_TIMEOUTS.labels(POOL_NAME)
        self._wait = DB_POOL_WAIT.labels(POOL_NAME)

    def connect(self) -> PoolProxiedConnection:
        self._pending.inc()
        started = time.perf_counter()
        try:
            return super().connect()
        except PoolTimeoutError:
            self._timeouts.inc()
            raise
        finally:
            self._pending.dec()
            self._wait.observe(time.perf_counter() - started)
