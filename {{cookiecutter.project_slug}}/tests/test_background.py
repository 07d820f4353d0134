"""Background tasks: work that goes on after the response, bounded, each within a deadline,
drained and then cancelled at SIGTERM; every task ends in a log line and in the metrics."""

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.background import supervise_background
from {{ cookiecutter.package_name }}.dependencies import Background
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import auth_headers, scrape, serve
from tests.processes import finish, json_lines, running, traceback_frames, url, wait_until_ready
from tests.servers import async_wait_until, wait_until

RUNNING = "background_tasks_running"
FINISHED = "background_tasks_finished_total"


def add_waiting_route(app: FastAPI, release: asyncio.Event) -> FastAPI:
    """POST /test/wait spawns a task that runs until the test sets `release`."""

    @app.post("/test/wait", status_code=202)
    async def spawn_waiting(background: Background) -> None:
        background.spawn("waiting", release.wait())

    return app


def logged(events: list[EventDict], event: str) -> list[EventDict]:
    return [e for e in events if e["event"] == event]


def has_logged(events: list[EventDict], event: str) -> Callable[[], Any]:
    """A condition for `async_wait_until`: `event` has been logged."""

    async def condition() -> bool:
        return bool(logged(events, event))

    return condition


async def test_the_work_goes_on_after_the_response_and_its_end_is_logged(
    settings: Settings, events: list[EventDict]
) -> None:
    release = asyncio.Event()
    async with serve(add_waiting_route(create_app(settings), release)) as client:
        before = await scrape(client)
        response = await client.post("/test/wait", headers={"X-Request-ID": "the-spawner"})
        # Answered while the task still waits.
        assert response.status_code == 202
        running_now = await scrape(client)
        assert running_now.value(RUNNING) == before.value(RUNNING) + 1
        assert not logged(events, "background.finished")

        release.set()
        await async_wait_until(
            has_logged(events, "background.finished"), within=5, message="no background.finished"
        )
        after = await scrape(client)

    [finished] = logged(events, "background.finished")
    assert {"task": "waiting", "request_id": "the-spawner", "log_level": "info"}.items() <= (
        finished.items()
    )
    assert after.value(RUNNING) == before.value(RUNNING)
    assert after.value(FINISHED, outcome="ok") == before.value(FINISHED, outcome="ok") + 1


async def test_a_task_past_its_deadline_is_cancelled_and_logged(
    make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    settings = make_settings(background_task_timeout=0.2)
    async with serve(create_app(settings)) as client:
        before = await scrape(client)
        response = await client.post(
            "/background/example", json={"seconds": 10}, headers={"X-Request-ID": "too-slow"}
        )
        assert response.status_code == 202
        await async_wait_until(
            has_logged(events, "background.timed_out"),
            within=5,
            message="the task outlived its deadline",
        )
        after = await scrape(client)

    [timed_out] = logged(events, "background.timed_out")
    assert {"task": "example", "request_id": "too-slow", "timeout_seconds": 0.2}.items() <= (
        timed_out.items()
    )
    assert after.value(FINISHED, outcome="timed_out") == (
        before.value(FINISHED, outcome="timed_out") + 1
    )
    assert not logged(events, "background.finished")
    assert not logged(events, "background.failed")


async def test_a_full_supervisor_refuses_work_with_a_503(
    make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    settings = make_settings(background_max_tasks=1, background_drain_seconds=0)
    async with serve(create_app(settings)) as client:
        accepted = await client.post("/background/example", json={"seconds": 10})
        refused = await client.post("/background/example", json={"seconds": 10})

    assert accepted.status_code == 202
    assert refused.status_code == 503
    reason = "too many background tasks are running"
    assert refused.json() == {"detail": f"background work refused: {reason}"}
    assert refused.headers["Retry-After"] == "1"
    [refusal] = logged(events, "background.refused")
    assert refusal["request_id"] == refused.headers["X-Request-ID"]
    assert {"task": "example", "reason": reason, "running": 1}.items() <= refusal.items()
    # The task that was accepted did not outlive the app: with no time to drain, it was
    # cancelled at shutdown, and said so.
    [cancelled] = logged(events, "background.cancelled")
    assert {"task": "example", "log_level": "warning"}.items() <= cancelled.items()


def test_a_failing_task_is_logged_once_without_locals_and_harms_nothing(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    done = tmp_path / "done"
    with running("slow app", service_env, tmp_path) as service:
        wait_until_ready(service, service_env["PORT"])
        waiting = {"name": "bystander", "until": str(done)}
        bystander = httpx.post(url(service_env, "/test/background/wait"), params=waiting)
        failing = httpx.post(url(service_env, "/test/background/fail"))
        wait_until(
            lambda: any(line["event"] == "background.failed" for line in service.log()),
            timeout=10,
            message="the failure was never logged",
        )
        # The other task and the server go on as before.
        live = httpx.get(url(service_env, "/health/live"))
        done.touch()
        wait_until(
            lambda: any(line["event"] == "background.finished" for line in service.log()),
            timeout=10,
            message="the other task never finished",
        )
        service.process.send_signal(signal.SIGTERM)
        returncode, stdout, stderr = finish(service)

    assert (bystander.status_code, failing.status_code, live.status_code) == (202, 202, 200)
    assert returncode == 0, stderr
    lines = json_lines(stdout)
    [failed] = [line for line in lines if line["event"] == "background.failed"]
    assert failed["task"] == "failing"
    assert failed["request_id"] == failing.headers["X-Request-ID"]
    # A context of its own: nothing of the request's but its log fields (no trace span).
    assert "trace_id" not in failed
    assert "_fail" in [frame["name"] for frame in traceback_frames(failed)]
    # Logged once: no other error line (asyncio's "exception was never retrieved"), no locals.
    assert [line for line in lines if line["level"] == "error"] == [failed]
    assert "s3cret" not in stdout + stderr
    [finished] = [line for line in lines if line["event"] == "background.finished"]
    assert (finished["task"], finished["request_id"]) == (
        "bystander",
        bystander.headers["X-Request-ID"],
    )


def test_sigterm_lets_running_tasks_finish_within_the_drain_then_cancels_the_rest(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    service_env |= {"DRAIN_SECONDS": "2", "BACKGROUND_DRAIN_SECONDS": "3"}
    done = tmp_path / "done"
    with running("slow app", service_env, tmp_path) as service:
        wait_until_ready(service, service_env["PORT"])
        for name, until in (("quick", done), ("stuck", tmp_path / "never")):
            spawned = httpx.post(
                url(service_env, "/test/background/wait"),
                params={"name": name, "until": str(until)},
            )
            assert spawned.status_code == 202
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        wait_until(
            lambda: httpx.get(url(service_env, "/health/ready")).status_code == 503,
            timeout=5,
            message="readiness never turned 503",
        )
        # Draining: the service still serves, and takes work (a request in flight at SIGTERM
        # may have committed what its task works on); the supervisor drains after the last.
        accepted = httpx.post(
            url(service_env, "/background/example"), json={"seconds": 0}, headers=auth_headers()
        )
        wait_until(
            lambda: any(line["event"] == "background.draining" for line in service.log()),
            timeout=10,
            message="the tasks were never drained",
        )
        done.touch()  # "quick" finishes within the drain, "stuck" never does
        returncode, stdout, stderr = finish(service)
        stopped_after = time.monotonic() - signalled

    assert accepted.status_code == 202
    assert returncode == 0, stderr
    lines = json_lines(stdout)
    ends = {
        line["task"]: line
        for line in lines
        if line["event"] in {"background.finished", "background.cancelled"}
    }
    assert {task: line["event"] for task, line in ends.items()} == {
        "example": "background.finished",
        "quick": "background.finished",
        "stuck": "background.cancelled",
    }
    [draining] = [line for line in lines if line["event"] == "background.draining"]
    assert draining["running"] == 2  # the example had finished
    # The stuck task had its BACKGROUND_DRAIN_SECONDS, and not much more (the event loop's
    # timers may fire a millisecond early).
    waited = timestamp(ends["stuck"]) - timestamp(draining)
    assert 3 - 0.05 <= waited < 3 + 1
    assert stopped_after < 2 + 3 + 5
    # Drained while the resources were still open: they close after the last task.
    events = [line["event"] for line in lines]
    last_task = max(i for i, event in enumerate(events) if event.startswith("background."))
    closing = [i for i, event in enumerate(events) if event == "resource.closed"]
    assert all(last_task < index for index in closing)


async def ignore_cancellation(cancelled: asyncio.Event, stop: asyncio.Event) -> None:
    """Runs until `stop` is set, whatever cancels it meanwhile."""
    while not stop.is_set():
        try:
            await stop.wait()
        except asyncio.CancelledError:
            cancelled.set()  # and on it goes


async def raise_(exception: BaseException) -> None:
    raise exception


async def test_a_task_that_ignores_its_cancellation_is_left_behind_named(
    make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    settings = make_settings(background_drain_seconds=0, shutdown_timeout=0.5)
    cancelled, stop = asyncio.Event(), asyncio.Event()
    stubborn = ignore_cancellation(cancelled, stop)
    try:
        async with supervise_background(settings) as supervisor:
            supervisor.spawn("stubborn", stubborn)
            supervisor.spawn("polite", asyncio.sleep(60))
            started = time.monotonic()
        drained_in = time.monotonic() - started
    finally:
        stop.set()  # for the test's event loop to close

    assert cancelled.is_set()
    assert [line["task"] for line in logged(events, "background.abandoned")] == ["stubborn"]
    assert [line["task"] for line in logged(events, "background.cancelled")] == ["polite"]
    # Bounded by SHUTDOWN_TIMEOUT: the resources it might use close after it.
    assert drained_in < 5


async def test_a_task_that_swallows_its_deadline_and_returns_is_timed_out(
    make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    async def swallow_the_deadline() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(60)

    async with supervise_background(make_settings(background_task_timeout=0.1)) as supervisor:
        supervisor.spawn("swallower", swallow_the_deadline())
        await async_wait_until(
            has_logged(events, "background.timed_out"), within=5, message="never timed out"
        )

    assert not logged(events, "background.finished")


@pytest.mark.parametrize("exception", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
async def test_a_task_that_raises_what_would_stop_the_server_fails_alone(
    settings: Settings, events: list[EventDict], exception: BaseException
) -> None:
    async with supervise_background(settings) as supervisor:
        supervisor.spawn("rogue", raise_(exception))
        supervisor.spawn("bystander", asyncio.sleep(0))
        await async_wait_until(
            has_logged(events, "background.failed"), within=5, message="never failed"
        )

    [failed] = logged(events, "background.failed")
    assert failed["task"] == "rogue"
    assert [line["task"] for line in logged(events, "background.finished")] == ["bystander"]


def timestamp(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["timestamp"]).timestamp()
