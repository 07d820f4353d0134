"""Fuzzing: whatever a client sends, within the OpenAPI schema or outside it, no route answers
with a server error. The service runs for real: uvicorn, its lifespan, the real servers. What
the fuzzing once found stays pinned down by a test of its own."""

{% if cookiecutter.use_postgres -%}
import json
{% endif -%}
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import uvicorn
{%- if cookiecutter.use_postgres %}
from httpx import AsyncClient
{%- endif %}
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import not_a_server_error

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from tests.conftest import auth_headers
from tests.servers import free_port, wait_until

# The app's own OpenAPI document: creating an app opens nothing and reads no setting.
schema = schemathesis.openapi.from_dict(create_app(Settings.model_construct()).openapi())


@pytest.fixture
def base_url(settings: Settings) -> Iterator[str]:
    """The app served by uvicorn on a free port, in a thread: an event loop of its own, as in
    production, which the blocking-call detector watches too."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), port=port, lifespan="on", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn")
    thread.start()
    try:
        wait_until(
            lambda: server.started or not thread.is_alive(),
            timeout=15,
            message="uvicorn never started",
        )
        assert server.started, "the service failed to start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


@schema.parametrize()
@settings(
    max_examples=30,  # per route; schemathesis adds its boundary and wrong-method cases
    derandomize=True,  # the same examples on every run: a failure here is never flaky
    database=None,  # nothing to replay from an earlier run
    deadline=None,  # a real server: timing varies
    # One server for all the examples of a route, on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_no_request_makes_the_service_fail(case: Case[Any], base_url: str) -> None:
    # As a client of the example routes (with use_auth, a valid token: the handlers get fuzzed,
    # not only the token check, which tests/test_auth.py fuzzes).
    case.call_and_validate(base_url=base_url, headers=auth_headers(), checks=[not_a_server_error])
{%- if cookiecutter.use_postgres %}


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", "/notes", {"text": "a\x00b"}),  # PostgreSQL text cannot hold NUL
        ("GET", f"/notes/{2**31}", None),  # beyond the integer id column
        ("POST", "/notes", {"text": "\ud800"}),  # a lone surrogate: no UTF-8 for it
    ],
)
async def test_what_fuzzing_found_is_refused_with_a_422(
    client: AsyncClient, method: str, url: str, body: object
) -> None:
    # json.dumps escapes what UTF-8 cannot carry (\ud800), as a client in another language might.
    content = None if body is None else json.dumps(body)
    headers = {"Content-Type": "application/json"}
    response = await client.request(method, url, content=content, headers=headers)

    assert response.status_code == 422
    # Where the input was, and what is wrong with it; never the input itself.
    for error in response.json()["detail"]:
        assert set(error) == {"type", "loc", "msg"}
{%- endif %}
