"""What every resource does the same way: verify with retries until the startup deadline, log its
opening and closing, close within a timeout without ever stopping the others from closing, and
turn an outage into a 503 for the requests that need it."""

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

import structlog
from fastapi import Request, status
from fastapi.responses import JSONResponse

from {{ cookiecutter.package_name }}.metrics import (
    RESOURCE_CLOSES,
    RESOURCE_OPEN_DURATION,
    RESOURCE_OPENS,
    RESOURCE_UNAVAILABLE,
)
from {{ cookiecutter.package_name }}.timing import elapsed_ms

log = structlog.get_logger(__name__)

FIRST_BACKOFF = 0.05
MAX_BACKOFF = 2.0
# Past this many doublings every pause has long reached its ceiling; a larger power of two
# would not fit in a float (OverflowError after 1,024 failures in a row: hours of an outage).
MAX_DOUBLINGS = 60


def doubling_delay(attempt: int, first: float, most: float) -> float:
    """The pause before retry number `attempt` (from 1): `first`, doubled at each attempt, at
    most `most`, however many attempts failed before."""
    return min(most, first * 2.0 ** min(attempt - 1, MAX_DOUBLINGS))


class ResourceUnavailableError(RuntimeError):
    """A resource does not answer: at startup until the deadline, or while serving a request."""

    def __init__(self, resource: str, reason: str) -> None:
        super().__init__(f"{resource}: {reason}")
        self.resource = resource


async def respond_unavailable(request: Request, exc: ResourceUnavailableError) -> JSONResponse:
    """The exception handler: a short 503 that a client may retry, never a 500 traceback."""
    log.warning("resource.unavailable", resource=exc.resource, error=str(exc))
    RESOURCE_UNAVAILABLE.labels(exc.resource).inc()
    return JSONResponse(
        {"detail": f"{exc.resource} is unavailable"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


def describe(exc: BaseException) -> str:
    """The root cause in one short line: drivers wrap errors (SQLAlchemy around asyncpg, ...)."""
    while exc.__cause__ is not None and not isinstance(exc, TimeoutError):
        exc = exc.__cause__
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


async def verify_until(
    resource: str, verify: Callable[[], Awaitable[object]], deadline: float
) -> None:
    """Retry `verify` with full-jitter exponential backoff until it passes or `deadline`
    (event-loop time) is reached; a hanging attempt is cut off at the deadline too."""
    loop = asyncio.get_running_loop()
    # What an attempt that failed on its own said (a refused password, say): the one that the
    # deadline cuts short only says "TimeoutError".
    answered: str | None = None
    for attempt in itertools.count(1):
        try:
            async with asyncio.timeout_at(deadline):
                await verify()
        except Exception as exc:
            error = describe(exc)
            log.warning("resource.open_failed", resource=resource, attempt=attempt, error=error)
            remaining = deadline - loop.time()
            if remaining <= 0:
                if isinstance(exc, TimeoutError) and answered is not None:
                    error = f"{error}, after {answered}"
                raise ResourceUnavailableError(
                    resource,
                    f"not available within the startup timeout after {attempt} attempts: {error}",
                ) from None
            if not isinstance(exc, TimeoutError):
                answered = error
            backoff = random.uniform(0, doubling_delay(attempt + 1, FIRST_BACKOFF, MAX_BACKOFF))  # noqa: S311
            await asyncio.sleep(min(backoff, remaining))
        else:
            return


@asynccontextmanager
async def lifecycle(
    resource: str,
    *,
    verify: Callable[[], Awaitable[object]] | None,
    close: Callable[[], Awaitable[object]],
    deadline: float,
    close_timeout: float,
    target: Mapping[str, object],
) -> AsyncIterator[None]:
    """Own a client for the life of the service: `verify` it, then `close` it on exit.
    `target` says where it points, for the log: never a secret."""
    started = time.perf_counter()
    try:
        if verify is not None:
            await verify_until(resource, verify, deadline)
    except BaseException:
        # It never opened, so there is nothing to report closing; just release what it holds.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(close(), close_timeout)
        raise
    log.info("resource.opened", resource=resource, duration_ms=elapsed_ms(started), **target)
    RESOURCE_OPENS.labels(resource).inc()
    RESOURCE_OPEN_DURATION.labels(resource).set(time.perf_counter() - started)
    try:
        yield
    finally:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(close(), close_timeout)
        except Exception as exc:
            log.error("resource.close_failed", resource=resource, error=describe(exc))
            RESOURCE_CLOSES.labels(resource, "failed").inc()
        else:
            log.info("resource.closed", resource=resource, duration_ms=elapsed_ms(started))
            RESOURCE_CLOSES.labels(resource, "ok").inc()
