"""What the benchmark loads: every row of its load table, grouped so that the rows a check
compares run back to back (bench/rounds.py keeps a block's rows together in every round)."""

from dataclasses import dataclass

# Concurrent readiness callers of the flood: every kubelet and load balancer of a large
# deployment at once, or anyone on the internet (the probe needs no authentication).
FLOOD_CONNECTIONS = 48


@dataclass(frozen=True)
class Endpoint:
    key: str
    # "service", "quiet" (the service with LOG_LEVEL=WARNING: no request log), "unmetered" (the
    # service with METRICS_ENABLED=false), "traced" (the service baked with use_opentelemetry,
    # exporting to a local sink), "bare", "floors" (the libraries alone, bench/apps/floors.py),
    # "naive", "upstream", or "raw": the plain asyncio loop, not served
    app: str
    path: str
    description: str
    # Another path of the same app that FLOOD_CONNECTIONS more connections call meanwhile.
    flood: str | None = None


BLOCKS: list[list[Endpoint]] = [
    [
        Endpoint("bare.live", "bare", "/health/live", "bare FastAPI app, GET /health/live"),
        Endpoint(
            "bare.routed",
            "bare",
            "/routed/health/live",
            "bare FastAPI app, the same route in an included APIRouter",
        ),
        Endpoint("service.live", "service", "/health/live", "service, GET /health/live"),
        Endpoint(
            "unmetered.live",
            "unmetered",
            "/health/live",
            "service without metrics (METRICS_ENABLED=false), GET /health/live",
        ),
        Endpoint(
            "quiet.live",
            "quiet",
            "/health/live",
            "service with LOG_LEVEL=WARNING, GET /health/live",
        ),
        Endpoint(
            "traced.live",
            "traced",
            "/health/live",
            "service with tracing, exporting to a local OTLP sink, GET /health/live",
        ),
    ],
    [
        Endpoint(
            "service.cache", "service", "/cache/bench", "service, GET /cache/{key} (Redis GET)"
        ),
        Endpoint(
            "floors.redis",
            "floors",
            "/redis",
            "libraries alone: a Starlette route, one redis-py GET",
        ),
        Endpoint(
            "unmetered.cache",
            "unmetered",
            "/cache/bench",
            "service without metrics, GET /cache/{key} (Redis GET)",
        ),
        Endpoint(
            "traced.cache",
            "traced",
            "/cache/bench",
            "service with tracing, GET /cache/{key} (Redis GET)",
        ),
    ],
    [
        Endpoint(
            "service.notes", "service", "/notes/{note_id}", "service, GET /notes/{id} (DB read)"
        ),
        Endpoint(
            "floors.orm",
            "floors",
            "/orm/{note_id}",
            "libraries alone: a Starlette route, one AsyncSession get(Note) + commit",
        ),
        Endpoint(
            "service.notes.flooded",
            "service",
            "/notes/{note_id}",
            f"service, GET /notes/{{id}} while {FLOOD_CONNECTIONS} more connections call"
            " /health/ready (their non-2xx count as errors)",
            flood="/health/ready",
        ),
    ],
    [
        Endpoint(
            "service.ready", "service", "/health/ready", "service, GET /health/ready (3 checks)"
        ),
        Endpoint(
            "naive.ready.postgres",
            "naive",
            "/health/ready/postgres",
            "naive readiness, PostgreSQL alone (a new asyncpg connection, SELECT 1)",
        ),
        Endpoint(
            "naive.ready.redis",
            "naive",
            "/health/ready/redis",
            "naive readiness, Redis alone (a new client, PING)",
        ),
        Endpoint(
            "naive.httpx_client",
            "naive",
            "/bench/httpx-client",
            "naive: build and close an httpx.AsyncClient, nothing sent",
        ),
    ],
    [
        Endpoint(
            "service.combined",
            "service",
            "/bench/combined",
            "service, GET /bench/combined (SELECT 1 in a transaction, Redis GET, HTTP GET)",
        ),
        Endpoint("raw.combined", "raw", "", "plain asyncio loop, the same statements and calls"),
        Endpoint("naive.combined", "naive", "/bench/combined", "naive, GET /bench/combined"),
    ],
    [
        Endpoint(
            "service.upstream",
            "service",
            "/upstream/ping",
            "service, GET /upstream/{path} (HTTP GET)",
        ),
        Endpoint(
            "floors.http",
            "floors",
            "/http",
            "libraries alone: a Starlette route, one GET with the service's httpx client",
        ),
        Endpoint("upstream.alone", "upstream", "/ping", "the upstream alone, GET /ping"),
    ],
]

ENDPOINTS = [endpoint for block in BLOCKS for endpoint in block]
