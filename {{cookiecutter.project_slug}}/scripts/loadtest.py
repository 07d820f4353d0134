{%- set any_resource = cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_http_client -%}
{%- set needs_setup = cookiecutter.use_postgres or cookiecutter.use_redis -%}
"""Load test of a running service: an asyncio + httpx client that keeps CONCURRENCY requests
in flight for DURATION seconds, spread over /health/ready and the example routes.

    python scripts/loadtest.py --url http://127.0.0.1:8000 --concurrency 50 --duration 10

Prints requests/s, errors and the p50/p99 latency of the answers that succeeded, per route
and in total, and exits 1 on any error (a status other than the route's expected one, or a
transport error), so that it can gate a deploy. It measures from a client's side: run on the
service's machine, the client competes with the service for CPU.
{%- if cookiecutter.use_postgres %}
POST /notes adds rows to the notes table.
{%- endif %}
{%- if cookiecutter.use_auth %}
The example routes need a bearer token: the script sends the one in the environment variable
LOADTEST_BEARER_TOKEN (with scope notes:write, for POST /notes), kept out of the command line.
{%- endif %}
"""

import argparse
import asyncio
import contextlib
import itertools
import math
{%- if cookiecutter.use_auth %}
import os
{%- endif %}
import sys
import time
{%- if cookiecutter.use_redis %}
import uuid
{%- endif %}
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str
    expected_status: int
    json: dict[str, Any] | None = None


@dataclass
class Results:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None

    def record_error(self, description: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = description


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run")
    return parser.parse_args()


{%- if needs_setup %}


async def expect(client: httpx.AsyncClient, route: Route) -> httpx.Response:
    """One request of the setup, which must succeed before the load starts."""
    response = await client.request(route.method, route.path, json=route.json)
    if response.status_code != route.expected_status:
        raise SystemExit(f"setup: {route.name} answered {response.status_code}: {response.text}")
    return response
{%- endif %}


async def prepare_routes(client: httpx.AsyncClient) -> list[Route]:
    """The routes to load, with whatever they read created first."""
{%- if any_resource %}
    routes = [Route("GET /health/ready", "GET", "/health/ready", 200)]
{%- if cookiecutter.use_postgres %}
    create_note = Route("POST /notes", "POST", "/notes", 201, {"text": "load test"})
    note_id = (await expect(client, create_note)).json()["id"]
    routes += [create_note, Route("GET /notes/{id}", "GET", f"/notes/{note_id}", 200)]
{%- endif %}
{%- if cookiecutter.use_redis %}
    key = f"loadtest-{uuid.uuid4().hex}"
    put_value = Route("PUT /cache/{key}", "PUT", f"/cache/{key}", 200, {"value": "load test"})
    await expect(client, put_value)
    routes += [put_value, Route("GET /cache/{key}", "GET", f"/cache/{key}", 200)]
{%- endif %}
{%- if cookiecutter.use_http_client %}
    routes.append(Route("GET /upstream/{path}", "GET", "/upstream/loadtest", 200))
{%- endif %}
    return routes
{%- else %}
    return [Route("GET /health/ready", "GET", "/health/ready", 200)]
{%- endif %}


def new_client(url: str) -> httpx.AsyncClient:
{%- if cookiecutter.use_auth %}
    token = os.environ.get("LOADTEST_BEARER_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=url, timeout=10.0, headers=headers)
{%- else %}
    return httpx.AsyncClient(base_url=url, timeout=10.0)
{%- endif %}


async def simulate_user(
    client: httpx.AsyncClient,
    deadline: float,
    routes: list[Route],
    first: int,
    results: dict[str, Results],
) -> None:
    """Request after request, round the routes from `first`: one whole round, so that even a
    short run on a busy machine measures every route, then on until `deadline`."""
    for turn in itertools.count(first):
        if turn - first >= len(routes) and time.monotonic() >= deadline:
            return
        route = routes[turn % len(routes)]
        started = time.perf_counter()
        try:
            response = await client.request(route.method, route.path, json=route.json)
        except httpx.HTTPError as exc:
            results[route.name].record_error(f"{type(exc).__name__}: {exc}")
            continue
        if response.status_code != route.expected_status:
            # An error, counted once, and not a latency: p50 and p99 are those of successes.
            results[route.name].record_error(f"status {response.status_code}: {response.text}")
            continue
        results[route.name].latencies_ms.append((time.perf_counter() - started) * 1000)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile; NaN when there is nothing to rank."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def report_line(name: str, results: Results, seconds: float) -> str:
    latencies = sorted(results.latencies_ms)
    requests = len(latencies) + results.errors
    return (
        f"{name:<22} {requests:>9} {requests / seconds:>9.1f} {percentile(latencies, 0.5):>9.2f}"
        f" {percentile(latencies, 0.99):>9.2f} {results.errors:>7}"
    )


def report(results: dict[str, Results], seconds: float) -> int:
    """Print the table; return the total number of errors."""
    total = Results()
    print(f"{'route':<22} {'requests':>9} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}")
    for name, route_results in results.items():
        print(report_line(name, route_results, seconds))
        total.latencies_ms += route_results.latencies_ms
        total.errors += route_results.errors
    print(report_line("total", total, seconds))
    for name, route_results in results.items():
        if route_results.first_error is not None:
            print(f"{name}: {route_results.errors} errors, the first: {route_results.first_error}")
    return total.errors


async def main() -> int:
    arguments = parse_arguments()
    try:
        async with new_client(arguments.url) as client:
            routes = await prepare_routes(client)
    except httpx.HTTPError as exc:
        print(f"setup: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    results = {route.name: Results() for route in routes}
    # Each user has a client, and so a keep-alive connection, of its own (a pool shared by all
    # of them would cost this process more CPU than the requests do), made before the clock
    # starts: making one takes a while on a busy machine.
    async with contextlib.AsyncExitStack() as clients:
        users = [
            await clients.enter_async_context(new_client(arguments.url))
            for _ in range(arguments.concurrency)
        ]
        started = time.monotonic()
        deadline = started + arguments.duration
        async with asyncio.TaskGroup() as tasks:
            for first, client in enumerate(users):
                tasks.create_task(simulate_user(client, deadline, routes, first, results))
        seconds = time.monotonic() - started
    errors = report(results, seconds)
    requests = sum(len(r.latencies_ms) + r.errors for r in results.values())
    return 1 if errors or not requests else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
