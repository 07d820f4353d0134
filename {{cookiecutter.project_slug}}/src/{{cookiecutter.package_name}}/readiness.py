"""Readiness checks that a flood of probes cannot multiply, and that answer on time whatever the
resource does: concurrent callers share one check in flight per resource, a finished result is
reused for READINESS_CACHE_SECONDS, and each caller waits at most READINESS_TIMEOUT."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from {{ cookiecutter.package_name }}.metrics import RESOURCE_UP
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.timing import elapsed_ms

Ping = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    latency_ms: float
    # The error's type, or "timeout": enough for an operator; messages can carry addresses.
    error: str | None
    # time.monotonic() when the check finished, to tell how old a reused result is.
    finished_at: float


{%- if cookiecutter.use_postgres %}


class NotReadyError(Exception):
    """A resource that answers but cannot serve this code yet (a database behind its
    migrations). The message is the reason /health/ready shows: it must hold nothing secret."""
{%- endif %}


def _error_name(exc: Exception) -> str:
{%- if cookiecutter.use_postgres %}
    if isinstance(exc, NotReadyError):
        return str(exc)
{%- endif %}
    # A driver's error is often wrapped (SQLAlchemy's around asyncpg's, ours around both):
    # the innermost one says what happened.
    while exc.__cause__ is not None and isinstance(exc.__cause__, Exception):
        exc = exc.__cause__
    return "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__


class SharedChecks:
    def __init__(self, timeout: float, max_age: float) -> None:
        self._timeout = timeout
        self._max_age = max_age
        self._running: dict[str, asyncio.Task[CheckResult]] = {}
        self._finished: dict[str, CheckResult] = {}

    async def check_all(self, pings: Mapping[str, Ping]) -> dict[str, CheckResult]:
        """Each resource's result: from a check that finished at most max_age ago, from the one
        running now, or from a new one; "timeout" for one that does not finish in time."""
        now = time.monotonic()
        results: dict[str, CheckResult] = {}
        pending: dict[str, asyncio.Task[CheckResult]] = {}
        for resource, ping in pings.items():
            finished = self._finished.get(resource)
            if finished is not None and now - finished.finished_at <= self._max_age:
                results[resource] = finished
            else:
                pending[resource] = self._running.get(resource) or self._start(resource, ping)
        if pending:
            started = time.perf_counter()
            # Unlike wait_for, wait cancels nothing: a caller that gives up leaves the shared
            # check to the others. And a caller's own deadline: cancelling a check can wait on
            # cleanup (SQLAlchemy shields a connection's close), which must not hold the answer.
            await asyncio.wait(pending.values(), timeout=self._timeout)
            for resource, task in pending.items():
                results[resource] = (
                    task.result()
                    if task.done()
                    else CheckResult(False, elapsed_ms(started), "timeout", time.monotonic())
                )
        return {resource: results[resource] for resource in pings}

    def _start(self, resource: str, ping: Ping) -> asyncio.Task[CheckResult]:
        task = asyncio.create_task(self._run(resource, ping), name=f"readiness-{resource}")
        self._running[resource] = task
        return task

    async def _run(self, resource: str, ping: Ping) -> CheckResult:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                await ping()
        except Exception as exc:
            result = CheckResult(False, elapsed_ms(started), _error_name(exc), time.monotonic())
        else:
            result = CheckResult(True, elapsed_ms(started), None, time.monotonic())
        finally:
            del self._running[resource]
        self._finished[resource] = result
        RESOURCE_UP.labels(resource).set(result.ok)
        return result

    async def cancel(self, cleanup_seconds: float) -> None:
        """Stop the checks still running, waiting at most `cleanup_seconds` for their cleanup."""
        running = list(self._running.values())
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=cleanup_seconds)


@asynccontextmanager
async def shared_checks(settings: Settings) -> AsyncIterator[SharedChecks]:
    checks = SharedChecks(settings.readiness_timeout, settings.readiness_cache_seconds)
    try:
        yield checks
    finally:
        # Before the resources close: a check must not hold a connection of a closing pool.
        await checks.cancel(settings.shutdown_timeout)
