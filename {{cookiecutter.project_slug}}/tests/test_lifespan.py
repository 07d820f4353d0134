{%- set verified = cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_rabbitmq -%}
"""The lifespan opens the enabled resources in order, closes them in reverse, and fails cleanly."""

import asyncio
{% if verified -%}
import time
from collections.abc import Callable
{% endif -%}
from contextlib import AbstractAsyncContextManager, AsyncExitStack

{% if verified -%}
import pytest
{% endif -%}
from fastapi import FastAPI
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.lifespan import State, lifespan
{%- if verified %}
from {{ cookiecutter.package_name }}.resources.lifecycle import ResourceUnavailableError, doubling_delay, lifecycle
{%- else %}
from {{ cookiecutter.package_name }}.resources.lifecycle import doubling_delay, lifecycle
{%- endif %}
{%- if cookiecutter.use_opentelemetry %}
from {{ cookiecutter.package_name }}.resources.tracing import new_tracer_provider
{%- endif %}
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import LIFESPAN_RESOURCES, RESOURCES
{%- if verified %}
from tests.servers import free_port, silent_server

# The resources that verify a server at startup (the HTTP client needs no upstream).
VERIFIED = [resource for resource in RESOURCES if resource != "http_client"]


def pointing_at(resource: str, port: int) -> dict[str, str]:
    """Settings that send `resource` to 127.0.0.1:`port`."""
    return {
        "postgres": {"database_url": f"postgresql://postgres@127.0.0.1:{port}/postgres"},
        "redis": {"redis_url": f"redis://127.0.0.1:{port}/0"},
{%- if cookiecutter.use_rabbitmq %}
        "rabbitmq": {"rabbitmq_url": f"amqp://guest:guest@127.0.0.1:{port}/"},
{%- endif %}
    }[resource]
{%- endif %}


def app_lifespan(settings: Settings) -> AbstractAsyncContextManager[State]:
    """The lifespan of a new app, with what create_app hands it."""
{%- if cookiecutter.use_opentelemetry %}
    return lifespan(FastAPI(), settings, new_tracer_provider())
{%- else %}
    return lifespan(FastAPI(), settings)
{%- endif %}


def resources_logged(events: list[EventDict], event: str) -> list[str]:
    return [e["resource"] for e in events if e["event"] == event]


async def test_opens_in_order_and_closes_in_reverse(
    settings: Settings, events: list[EventDict]
) -> None:
    async with app_lifespan(settings) as state:
        expected_state = {
            "settings",
            "shutdown",
            "metrics",
            "background",
            "readiness_checks",
            *RESOURCES,
        }
{%- if cookiecutter.use_postgres %}
        expected_state.add("postgres_schema")
{%- endif %}
{%- if cookiecutter.use_postgres and cookiecutter.use_rabbitmq %}
        expected_state.add("outbox")
{%- endif %}
{%- if cookiecutter.use_opentelemetry %}
        expected_state.add("tracer_provider")
{%- endif %}
{%- if cookiecutter.use_auth %}
        expected_state.add("auth_keys")
{%- endif %}
        assert set(state) == expected_state
        assert resources_logged(events, "resource.opened") == LIFESPAN_RESOURCES
        assert resources_logged(events, "resource.closed") == []

    assert resources_logged(events, "resource.closed") == LIFESPAN_RESOURCES[::-1]
    assert resources_logged(events, "resource.open_failed") == []
    opened = {e["resource"]: e for e in events if e["event"] == "resource.opened"}
    for event in events:
        if event["event"] in {"resource.opened", "resource.closed"}:
            assert event["log_level"] == "info"
            assert event["duration_ms"] >= 0
    expected_targets = {
        "postgres": {"host", "port", "database"},
        "redis": {"host", "port", "db"},
        "http_client": {"base_url_host"},
{%- if cookiecutter.use_rabbitmq %}
        "rabbitmq": {"host", "port", "vhost", "queue"},
{%- endif %}
        "tracing": {"service_name", "sampler"},
{%- if cookiecutter.use_auth %}
        "auth_keys": {"issuer", "jwks_url", "keys"},
{%- endif %}
    }
    for resource, event in opened.items():
        assert expected_targets[resource] <= set(event)


async def test_each_app_gets_its_own_resources(settings: Settings) -> None:
    async with app_lifespan(settings) as first, app_lifespan(settings) as second:
        first_resources, second_resources = dict(first), dict(second)
        for resource in RESOURCES:
            assert first_resources[resource] is not second_resources[resource]

{%- if verified %}


@pytest.mark.parametrize("failing", VERIFIED)
async def test_a_failure_closes_what_was_already_open(
    failing: str, make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    settings = make_settings(startup_timeout=0.5, **pointing_at(failing, free_port()))

    with pytest.raises(ResourceUnavailableError, match=failing):
        async with app_lifespan(settings):
            pytest.fail("the lifespan must not start")

    opened_before = LIFESPAN_RESOURCES[: LIFESPAN_RESOURCES.index(failing)]
    assert resources_logged(events, "resource.opened") == opened_before
    assert resources_logged(events, "resource.closed") == opened_before[::-1]
    failures = [e for e in events if e["event"] == "resource.open_failed"]
    assert {e["resource"] for e in failures} == {failing}
    # A refused connection is retried until the deadline.
    assert [e["attempt"] for e in failures] == list(range(1, len(failures) + 1))
    assert len(failures) >= 2


@pytest.mark.parametrize("failing", VERIFIED)
async def test_the_startup_deadline_cuts_off_a_server_that_never_answers(
    failing: str, make_settings: Callable[..., Settings], events: list[EventDict]
) -> None:
    with silent_server() as port:
        settings = make_settings(startup_timeout=1.0, **pointing_at(failing, port))
        started = time.monotonic()
        with pytest.raises(ResourceUnavailableError, match="startup timeout"):
            async with app_lifespan(settings):
                pytest.fail("the lifespan must not start")
        elapsed = time.monotonic() - started

    assert 1.0 <= elapsed < 2.5
    assert resources_logged(events, "resource.open_failed")[-1] == failing
{%- endif %}


async def test_a_failing_close_is_logged_and_does_not_stop_the_others(
    events: list[EventDict],
) -> None:
    closed: list[str] = []

    async def close_first() -> None:
        closed.append("first")

    async def close_broken() -> None:
        raise ConnectionError("server went away")

    async def close_hanging() -> None:
        await asyncio.Event().wait()

    deadline = asyncio.get_running_loop().time() + 1
    async with AsyncExitStack() as stack:
        for name, close in [
            ("first", close_first),
            ("broken", close_broken),
            ("hanging", close_hanging),
        ]:
            await stack.enter_async_context(
                lifecycle(
                    name,
                    verify=None,
                    close=close,
                    deadline=deadline,
                    close_timeout=0.2,
                    target={},
                )
            )

    assert closed == ["first"]
    outcomes = [
        (e["event"], e["resource"]) for e in events if e["event"].startswith("resource.close")
    ]
    assert outcomes == [
        ("resource.close_failed", "hanging"),
        ("resource.close_failed", "broken"),
        ("resource.closed", "first"),
    ]
    errors = {e["resource"]: e["error"] for e in events if e["event"] == "resource.close_failed"}
    assert errors == {"hanging": "TimeoutError", "broken": "ConnectionError: server went away"}


def test_retry_pauses_double_up_to_their_ceiling_after_any_number_of_failures() -> None:
    # The outbox relay and the consumer retry for as long as an outage lasts: after 1,024
    # failures in a row a plain 2**n no longer fits in a float (OverflowError).
    attempts = [1, 2, 3, 5, 6, 1_025, 10**6]
    pauses = [doubling_delay(attempt, 0.5, 10.0) for attempt in attempts]

    assert pauses == [0.5, 1.0, 2.0, 8.0, 10.0, 10.0, 10.0]
