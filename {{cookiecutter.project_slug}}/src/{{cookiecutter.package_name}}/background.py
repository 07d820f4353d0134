"""Work that outlives its request, supervised: the lifespan's supervisor runs each task
concurrently, at most BACKGROUND_MAX_TASKS at once, each within BACKGROUND_TASK_TIMEOUT; at
shutdown it refuses new work, gives the running tasks BACKGROUND_DRAIN_SECONDS and cancels the
rest. Every task ends in one log line: background.finished, .failed, .timed_out or .cancelled."""

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import structlog

from {{ cookiecutter.package_name }}.metrics import BACKGROUND_FINISHED, BACKGROUND_RUNNING
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.timing import elapsed_ms

log = structlog.get_logger(__name__)


class BackgroundRefusedError(Exception):
    """The supervisor takes no more work: it is full, or the service is stopping. The route
    decides what then: answer 503 (the example), or do the work itself, in the request."""


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self._max_tasks = settings.background_max_tasks
        self._task_timeout = settings.background_task_timeout
        # How long cancelled tasks get to end; one that ignores its cancellation is given up.
        self._cancel_timeout = settings.shutdown_timeout
        self._closing = False
        # The event loop holds its tasks only weakly: without these references a running task
        # could be garbage-collected.
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, name: str, work: Coroutine[Any, Any, object]) -> None:
        """Run `work` from now on, concurrently with the rest of the request and beyond its
        response. Raises BackgroundRefusedError when full or stopping: the route decides."""
        # Accepted during the server's own drain, until its last request is answered: a
        # request in flight at SIGTERM may have committed the work's data already.
        if self._closing:
            self._refuse(name, work, "the service is stopping")
        if len(self._tasks) >= self._max_tasks:
            self._refuse(name, work, "too many background tasks are running")
        # A context of its own, not a copy of the request's (asyncio's default): that would
        # hand the task whatever the request set in context variables, such as its trace span,
        # which ends with the response. The task gets the request's log fields back instead.
        request_fields = structlog.contextvars.get_contextvars()
        task = asyncio.create_task(
            self._run(name, work, request_fields),
            name=f"background {name}",
            context=contextvars.Context(),
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refuse(self, name: str, work: Coroutine[Any, Any, object], reason: str) -> NoReturn:
        work.close()  # never to run: closed, or Python warns that it was never awaited
        log.warning("background.refused", task=name, reason=reason, running=len(self._tasks))
        raise BackgroundRefusedError(reason)

    async def _run(
        self, name: str, work: Coroutine[Any, Any, object], request_fields: dict[str, Any]
    ) -> None:
        # Every line logged in the task, the work's own too, names it and its request.
        structlog.contextvars.bind_contextvars(**(request_fields | {"task": name}))
        started = time.perf_counter()
        BACKGROUND_RUNNING.inc()
        log.debug("background.started")
        outcome = "cancelled"
        deadline = asyncio.timeout(self._task_timeout)
        try:
            async with deadline:
                await work
        except asyncio.CancelledError:
            log.warning("background.cancelled", duration_ms=elapsed_ms(started))
            raise
        except BaseException as exc:
            # Logged here and swallowed, SystemExit and KeyboardInterrupt too (asyncio would
            # stop the server with them): a failure reaches no other task, nor the server.
            outcome = "timed_out" if deadline.expired() else "failed"
            # The deadline's own TimeoutError says nothing more; a cleanup's error would.
            self._log_end(outcome, started, exc_info=not isinstance(exc, TimeoutError))
        else:
            # One that swallowed its deadline's cancellation, then returned, is late all the same.
            outcome = "timed_out" if deadline.expired() else "ok"
            self._log_end(outcome, started, exc_info=False)
        finally:
            BACKGROUND_RUNNING.dec()
            BACKGROUND_FINISHED.labels(outcome).inc()

    def _log_end(self, outcome: str, started: float, *, exc_info: bool) -> None:
        duration_ms = elapsed_ms(started)
        if outcome == "ok":
            log.info("background.finished", duration_ms=duration_ms)
        elif outcome == "failed":
            log.error("background.failed", duration_ms=duration_ms, exc_info=True)
        else:
            log.error(
                "background.timed_out",
                timeout_seconds=self._task_timeout,
                duration_ms=duration_ms,
                exc_info=exc_info,
            )

    async def drain(self, seconds: float) -> None:
        """Refuse new work, let the running tasks finish for `seconds`, cancel the rest."""
        self._closing = True
        if not self._tasks:
            return
        log.info("background.draining", running=len(self._tasks), drain_seconds=seconds)
        # Even at 0 seconds this waits one turn of the event loop, in which every task not
        # started yet takes its first step: cancelled, each one logs background.cancelled.
        _, unfinished = await asyncio.wait(list(self._tasks), timeout=seconds)
        for task in unfinished:
            task.cancel()
        if not unfinished:
            return
        # Each logs its cancellation as it ends. One that ignores it would hold the shutdown
        # (and the resources it uses) for ever: it is left behind, named, after a while.
        _, ignored = await asyncio.wait(unfinished, timeout=self._cancel_timeout)
        for task in ignored:
            log.error("background.abandoned", task=task.get_name().removeprefix("background "))


@asynccontextmanager
async def supervise_background(settings: Settings) -> AsyncIterator[Supervisor]:
    supervisor = Supervisor(settings)
    try:
        yield supervisor
    finally:
        await supervisor.drain(settings.background_drain_seconds)
