"""Send one app REQUESTS requests in-process, straight through its ASGI interface (no server, no
sockets between client and app), after a warm-up: the program that bench/run.py runs under
callgrind to count the instructions a request costs. Runs in the baked service's venv.

    python drive.py MODULE PATH REQUESTS    MODULE: an app of bench/apps (bare, service, floors)

The app's real lifespan runs first, so routes find their resources in the request state, as
under uvicorn. Exits non-zero if any response is not 200.
"""

import importlib
import sys
from collections.abc import MutableMapping
from typing import Any

import uvloop
from starlette.types import ASGIApp, Message

WARMUP_REQUESTS = 200


async def get(app: ASGIApp, path: str, state: MutableMapping[str, Any]) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"user-agent", b"bench")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": dict(state),  # what uvicorn does per request
    }
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    if statuses != [200]:
        raise SystemExit(f"GET {path} answered {statuses}")


async def drive(module: str, path: str, requests: int) -> None:
    app = importlib.import_module(module).app
    async with app.router.lifespan_context(app) as state:
        for _ in range(WARMUP_REQUESTS + requests):
            await get(app, path, state or {})


if __name__ == "__main__":
    module_name, request_path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    uvloop.run(drive(module_name, request_path, count))
