"""The service's own app plus routes that take their time, for the shutdown tests to stop it
while requests are in flight, one that reads a whole request body, and one that fails, for what
an unhandled error logs: `main("tests.slow_app:app")` serves it as `python -m` would."""

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from {{ cookiecutter.package_name }}.main import app


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
