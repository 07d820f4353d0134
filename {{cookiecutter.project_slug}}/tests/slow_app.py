"""The service's own app plus routes that take their time, for the shutdown tests to stop it
while requests are in flight, one that reads a whole request body, one that fails, for what
an unhandled error logs, and background tasks that wait for a test or fail:
`main("tests.slow_app:app")` serves it as `python -m` would."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
{%- if cookiecutter.use_rabbitmq %}
from typing import Any
{%- endif %}

from fastapi import Request
from fastapi.responses import StreamingResponse

{% if cookiecutter.use_rabbitmq -%}
from {{ cookiecutter.package_name }} import messages
{% endif -%}
from {{ cookiecutter.package_name }}.dependencies import Background
from {{ cookiecutter.package_name }}.main import app
{%- if cookiecutter.use_rabbitmq %}

_process = messages.process


async def _process_or_wait(payload: dict[str, Any]) -> None:
    """A message {"text": "wait"} is handled until it is cancelled (at shutdown)."""
    if payload.get("text") == "wait":
        await asyncio.Event().wait()
    await _process(payload)


messages.process = _process_or_wait
{%- endif %}


class InFlight:
    requests = 0


@app.get("/test/in-flight")
async def in_flight() -> int:
    return InFlight.requests


@app.get("/test/slow")
async def slow(seconds: float) -> dict[str, float]:
    InFlight.requests += 1
    try:
        await asyncio.sleep(seconds)
    finally:
        InFlight.requests -= 1
    return {"slept": seconds}


@app.get("/test/stream")
async def stream() -> StreamingResponse:
    """A response that never ends, like a feed of server-sent events."""

    async def ticks() -> AsyncIterator[bytes]:
        while True:
            yield b"tick\n"
            await asyncio.sleep(0.05)

    return StreamingResponse(ticks(), media_type="text/plain")


@app.post("/test/body")
async def body(request: Request) -> int:
    """Reads the whole body into memory, as a route with a JSON body does."""
    return len(await request.body())


@app.get("/test/fail")
async def fail() -> None:
    raise RuntimeError("a bug in a route")


@app.post("/test/background/wait", status_code=202)
async def background_wait(name: str, until: str, background: Background) -> None:
    """A task that runs until the file `until` exists: the test ends it when it chooses."""

    async def wait() -> None:
        # A poll, not an Event: the signal comes from the test, another process.
        while not Path(until).exists():  # noqa: ASYNC110, ASYNC240
            await asyncio.sleep(0.02)

    background.spawn(name, wait())


async def _fail(token: str) -> None:
    await asyncio.sleep(0)
    raise RuntimeError("a bug in a background task")


@app.post("/test/background/fail", status_code=202)
async def background_fail(background: Background) -> None:
    # A local variable a traceback with locals would show.
    background.spawn("failing", _fail("s3cret-in-a-local"))
