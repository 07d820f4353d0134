"""Fixtures that run the real lifespan against real servers.

DATABASE_URL (an admin URL: the run creates its own database and drops it) and REDIS_URL come
from the environment and default to the local servers.
{%- if cookiecutter.use_rabbitmq %}
So do RABBITMQ_URL and RABBITMQ_MANAGEMENT_URL: the run makes a vhost of its own on that broker,
through its management API, and deletes it at the end.
{%- endif %}
"""

{% if cookiecutter.use_postgres or cookiecutter.use_http_client or cookiecutter.use_rabbitmq -%}
import asyncio
{% endif -%}
import os
{% if cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_rabbitmq -%}
import uuid
{% endif -%}
from collections.abc import AsyncIterator, Callable, Iterator
{%- if cookiecutter.use_postgres %}
from contextlib import asynccontextmanager, contextmanager
{%- else %}
from contextlib import asynccontextmanager
{%- endif %}
from pathlib import Path
{% if cookiecutter.use_redis -%}
from typing import Any, cast
{% else -%}
from typing import Any
{% endif -%}
{% if cookiecutter.use_rabbitmq -%}
from urllib.parse import quote, unquote, urlsplit
{% endif %}
{% if cookiecutter.use_rabbitmq -%}
import aio_pika
{% endif -%}
import anyio.to_thread
{% if cookiecutter.use_postgres -%}
import asyncpg
{% endif -%}
{% if cookiecutter.use_rabbitmq -%}
import httpx
{% endif -%}
import pytest
{% if cookiecutter.use_redis -%}
import redis
{% endif -%}
import structlog
{%- if cookiecutter.use_http_client %}
import uvloop
{%- endif %}
{%- if cookiecutter.use_postgres %}
from alembic import command
from alembic.config import Config
{%- endif %}
from asgi_lifespan import LifespanManager
from blockbuster import BlockBuster, blockbuster_ctx
from fastapi import FastAPI
{%- if cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_rabbitmq %}
from httpx import ASGITransport, AsyncClient, Response
{%- else %}
from httpx import ASGITransport, AsyncClient
{%- endif %}
from prometheus_client.parser import text_string_to_metric_families
{%- if cookiecutter.use_postgres %}
from sqlalchemy.engine import make_url
{%- endif %}
from structlog.typing import EventDict

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.settings import Settings
{%- if cookiecutter.use_auth %}
from tests.identity_provider import AUDIENCE, IdentityProvider
{%- endif %}
{%- if cookiecutter.use_opentelemetry %}
from tests.otlp import OtlpReceiver, otlp_receiver
{%- endif %}
{%- if cookiecutter.use_http_client %}
from tests.servers import free_port, upstream_server
{%- else %}
from tests.servers import free_port
{%- endif %}

{% set resources = (["postgres"] if cookiecutter.use_postgres else [])
    + (["redis"] if cookiecutter.use_redis else [])
    + (["http_client"] if cookiecutter.use_http_client else [])
    + (["rabbitmq"] if cookiecutter.use_rabbitmq else []) -%}
# The resources this service opens, in lifespan order: those /health/ready checks.
RESOURCES: list[str] = {{ resources | tojson }}
# Everything the lifespan opens and closes, logging resource.opened / resource.closed.
{%- if cookiecutter.use_opentelemetry %}
# The tracer provider opens first, so that it closes last.
{%- endif %}
{%- set lifespan_resources = (["tracing"] if cookiecutter.use_opentelemetry else [])
    + (["postgres"] if cookiecutter.use_postgres else [])
    + (["redis"] if cookiecutter.use_redis else [])
    + (["http_client"] if cookiecutter.use_http_client else [])
    + (["auth_keys"] if cookiecutter.use_auth else [])
    + (["rabbitmq"] if cookiecutter.use_rabbitmq else []) %}
{%- if cookiecutter.use_auth %}
# The provider's keys are no check of readiness: tokens signed with a key fetched before pass
# while the provider is down.
{%- endif %}
{%- if lifespan_resources %}
LIFESPAN_RESOURCES: list[str] = [
{%- for resource in lifespan_resources %}
    "{{ resource }}",
{%- endfor %}
]
{%- else %}
LIFESPAN_RESOURCES: list[str] = []
{%- endif %}
PROJECT = Path(__file__).resolve().parent.parent
{%- if cookiecutter.use_postgres %}

ADMIN_DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ALEMBIC_INI = PROJECT / "alembic.ini"
{%- endif %}
{%- if cookiecutter.use_redis %}
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# The keys of this test run (REDIS_KEY_PREFIX): deleted at the end, whatever the tests wrote.
REDIS_KEY_PREFIX = f"test-{uuid.uuid4().hex[:12]}:"
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
# The broker of the tests, and its management HTTP API, through which each test run makes a
# vhost of its own, as RABBITMQ_URL's user (an administrator: guest is one), and deletes it at
# the end with everything in it: the same way on a developer's broker and in CI's service
# container, where no rabbitmqctl is at hand. A vhost in RABBITMQ_URL is not used.
RABBITMQ_SERVER_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
RABBITMQ_MANAGEMENT_URL = os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
# This run's vhost (each pytest-xdist worker's: each is a run), and the URL of it.
RABBITMQ_VHOST = f"test-{uuid.uuid4().hex[:12]}"
RABBITMQ_URL = urlsplit(RABBITMQ_SERVER_URL)._replace(path=f"/{RABBITMQ_VHOST}").geturl()
# The queues of the test running now, deleted when it ends, not only with the vhost: a quorum
# queue holds file handles on the broker (a few hundred left until the end of a run exhausted
# a broker's default limit of 1024).
RABBITMQ_QUEUES: list[str] = []


def rabbitmq_management(method: str, path: str, **kwargs: Any) -> None:
    """A request to the management API as RABBITMQ_URL's user; where it fails, the tests that
    need the broker fail, saying why. (Not pytest.exit: pytest-xdist's workers cannot.)"""
    server = urlsplit(RABBITMQ_SERVER_URL)
    user = unquote(server.username or "guest")
    auth = (user, unquote(server.password or "guest"))
    url = f"{RABBITMQ_MANAGEMENT_URL.rstrip('/')}{path}"
    try:
        # Straight to the broker, as the AMQP connections go: no HTTP_PROXY.
        response = httpx.request(method, url, auth=auth, timeout=10, trust_env=False, **kwargs)
    except httpx.HTTPError as exc:
        pytest.fail(
            f"RabbitMQ's management API does not answer at {RABBITMQ_MANAGEMENT_URL}"
            f" ({type(exc).__name__}: {exc}): the tests make a vhost of their own through it."
            " Enable it on the broker (`rabbitmq-plugins enable rabbitmq_management`, or the"
            " rabbitmq:3-management image), or set RABBITMQ_MANAGEMENT_URL.",
            pytrace=False,
        )
    if response.is_error:
        pytest.fail(
            f"RabbitMQ's management API answered {method} {path} with {response.status_code}"
            f" {response.text[:200]!r}: the tests log in to it as RABBITMQ_URL's user"
            f" ({user!r}), who must be an administrator to make a vhost.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """RABBITMQ_URL: this run's vhost, made now, with every permission for its user; deleted
    at the end, with whatever the tests left in it."""
    vhost = quote(RABBITMQ_VHOST, safe="")
    user = quote(unquote(urlsplit(RABBITMQ_SERVER_URL).username or "guest"), safe="")
    rabbitmq_management("PUT", f"/api/vhosts/{vhost}", json={"description": "a test run's"})
    try:
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        rabbitmq_management("PUT", f"/api/permissions/{vhost}/{user}", json=everything)
        yield RABBITMQ_URL
    finally:
        rabbitmq_management("DELETE", f"/api/vhosts/{vhost}")


def new_rabbitmq_queue() -> str:
    queue = f"{RABBITMQ_VHOST}.{uuid.uuid4().hex[:8]}"
    RABBITMQ_QUEUES.append(queue)
    return queue


async def delete_rabbitmq_topology(queues: list[str]) -> None:
    """Delete each queue's topology (resources/rabbitmq.py): queues first, then exchanges."""
    connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    async with connection:
        channel = await connection.channel()
        for queue in queues:
            for name in (queue, f"{queue}.dead-letter"):
                await channel.queue_delete(name)
                await channel.exchange_delete(name)


@pytest.fixture(autouse=True)
def _delete_the_tests_rabbitmq_topology() -> Iterator[None]:
    yield
    if RABBITMQ_QUEUES:
        queues = RABBITMQ_QUEUES.copy()
        RABBITMQ_QUEUES.clear()
        asyncio.run(delete_rabbitmq_topology(queues))
{%- endif %}
{%- if cookiecutter.use_postgres %}


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def alembic_config(database_url: str) -> Iterator[Config]:
    """alembic.ini, for `alembic.command` functions to run against database_url."""
    with pytest.MonkeyPatch.context() as patch:
        # migrations/env.py reads DATABASE_URL, like the service.
        patch.setenv("DATABASE_URL", database_url)
        # Our logging stays as pytest set it up: env.py skips alembic.ini's logging section.
        yield Config(ALEMBIC_INI, attributes={"configure_logger": False})


def migrate(database_url: str, revision: str = "head") -> None:
    """`alembic upgrade <revision>` on database_url."""
    with alembic_config(database_url) as config:
        command.upgrade(config, revision)


async def admin_execute(statement: str, admin_url: str = ADMIN_DATABASE_URL) -> None:
    admin = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


def new_database_url() -> tuple[str, str]:
    """A name for a database of a test's own, and its URL on the server of DATABASE_URL."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = make_url(ADMIN_DATABASE_URL).set(drivername="postgresql+asyncpg", database=name)
    return name, url.render_as_string(hide_password=False)


@asynccontextmanager
async def empty_database() -> AsyncIterator[str]:
    """A new database with no table at all, dropped at the end: its URL."""
    name, url = new_database_url()
    await admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield url
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of this test run's own, built by the migrations, dropped at the end."""
    name, url = new_database_url()
    asyncio.run(admin_execute(f'CREATE DATABASE "{name}"'))
    try:
        with alembic_config(url) as config:
            # Down to nothing and up again: every downgrade must undo its upgrade.
            command.upgrade(config, "head")
            command.downgrade(config, "base")
            command.upgrade(config, "head")
        yield url
    finally:
        asyncio.run(admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
{%- if cookiecutter.use_rabbitmq %}


@pytest.fixture(autouse=True)
def _no_outbox_events_left_for_the_next_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A note created just before its app stopped leaves its event pending in the run's shared
    database: the next test's relay would publish it to that test's queue, as one more message
    to handle. Set up first, so torn down last: after the test's apps have stopped."""
    if "database_url" not in request.fixturenames:
        yield
        return
    database_url = request.getfixturevalue("database_url")
    yield
    asyncio.run(admin_execute("DELETE FROM outbox", database_url))
{%- endif %}
{%- endif %}
{%- if cookiecutter.use_redis %}


def delete_keys(prefix: str) -> int:
    """Delete every key starting with `prefix` from REDIS_URL's database; how many there were."""
    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        return cast(int, client.delete(*keys)) if keys else 0


@pytest.fixture(scope="session", autouse=True)
def _delete_this_runs_redis_keys() -> Iterator[None]:
    """The developer's Redis keeps nothing of a test run, whatever TTL the tests chose."""
    yield
    delete_keys(REDIS_KEY_PREFIX)
{%- endif %}
{%- if cookiecutter.use_auth %}


# The identity provider the services of the tests trust (tests/identity_provider.py), and the
# scopes of the token auth_headers() carries: every scope an example route asks for.
IDENTITY_PROVIDER = IdentityProvider()
EXAMPLE_SCOPES = ["notes:write"]


@pytest.fixture(scope="session", autouse=True)
def _close_the_identity_provider() -> Iterator[None]:
    yield
    IDENTITY_PROVIDER.close()
{%- endif %}


def auth_headers() -> dict[str, str]:
{%- if cookiecutter.use_auth %}
    """What a request to an example route carries: a bearer token with every example scope."""
    return {"Authorization": f"Bearer {IDENTITY_PROVIDER.token(scopes=EXAMPLE_SCOPES)}"}
{%- else %}
    """What a request to an example route carries: nothing (the service has no use_auth)."""
    return {}
{%- endif %}
{%- if cookiecutter.use_opentelemetry %}


@pytest.fixture(scope="session", autouse=True)
def collector() -> Iterator[OtlpReceiver]:
    """Every test's spans go to a local receiver, as they would go to a collector: without one
    the exporter would retry at each shutdown until SHUTDOWN_TIMEOUT. (tests/test_tracing.py
    points single tests at receivers of their own.)"""
    with otlp_receiver() as receiver, pytest.MonkeyPatch.context() as patch:
        patch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        yield receiver
{%- endif %}
{%- if cookiecutter.use_http_client %}


@pytest.fixture(scope="session")
def upstream_url() -> Iterator[str]:
    with upstream_server() as url:
        yield url
{%- endif %}


@pytest.fixture
{%- set servers = (["database_url: str"] if cookiecutter.use_postgres else [])
    + (["upstream_url: str"] if cookiecutter.use_http_client else [])
    + (["rabbitmq_url: str"] if cookiecutter.use_rabbitmq else []) %}
{%- if servers | join(", ") | length <= 53 %}
def make_settings({{ servers | join(", ") }}) -> Callable[..., Settings]:
{%- else %}
def make_settings(
    {{ servers | join(", ") }}
) -> Callable[..., Settings]:
{%- endif %}
    """Settings pointing at the test servers; keyword arguments override single fields."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "startup_timeout": 5.0,
{%- if cookiecutter.use_postgres %}
            "database_url": database_url,
{%- endif %}
{%- if cookiecutter.use_redis %}
            "redis_url": REDIS_URL,
            "redis_key_prefix": REDIS_KEY_PREFIX,
{%- endif %}
{%- if cookiecutter.use_http_client %}
            "http_client_base_url": upstream_url,
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
            "rabbitmq_url": rabbitmq_url,
            "rabbitmq_queue": new_rabbitmq_queue(),
{%- endif %}
{%- if cookiecutter.use_auth %}
            "auth_issuer": IDENTITY_PROVIDER.issuer,
            "auth_audience": AUDIENCE,
{%- endif %}
        }
        return Settings(_env_file=None, **(values | overrides))

    return make


@pytest.fixture
def service_env(
    tmp_path: Path,
{%- if cookiecutter.use_postgres %}
    database_url: str,
{%- endif %}
{%- if cookiecutter.use_http_client %}
    upstream_url: str,
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
    rabbitmq_url: str,
{%- endif %}
{%- if cookiecutter.use_opentelemetry %}
    collector: OtlpReceiver,
{%- endif %}
) -> dict[str, str]:
    """The environment of the service run as a process (tests/processes.py): the test servers,
    a free port, JSON logs, and nothing inherited that could change its settings."""
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(PROJECT),  # for tests.slow_app
        "HOME": str(tmp_path),
        "PORT": str(free_port()),
        "LOG_FORMAT": "json",
        "STARTUP_TIMEOUT": "10",
{%- if cookiecutter.use_postgres %}
        "DATABASE_URL": database_url,
{%- endif %}
{%- if cookiecutter.use_redis %}
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": REDIS_KEY_PREFIX,
{%- endif %}
{%- if cookiecutter.use_http_client %}
        "HTTP_CLIENT_BASE_URL": upstream_url,
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
        "RABBITMQ_URL": rabbitmq_url,
        "RABBITMQ_QUEUE": new_rabbitmq_queue(),
{%- endif %}
{%- if cookiecutter.use_opentelemetry %}
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
{%- endif %}
{%- if cookiecutter.use_auth %}
        "AUTH_ISSUER": IDENTITY_PROVIDER.issuer,
        "AUTH_AUDIENCE": AUDIENCE,
{%- endif %}
    }


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


# Where a blocking call inside the event loop is deliberate: (file, functions on the stack).
BLOCKING_ALLOWED_IN: list[tuple[str, set[str]]] = [
    # Logging an exception renders its traceback, which reads source files (cached by linecache).
    ("structlog/tracebacks.py", {"extract"}),
    ("structlog/dev.py", {"__call__"}),
    # FastAPI looks an endpoint's source file up once, to name it in error messages.
    ("fastapi/routing.py", {"_extract_endpoint_context"}),
    # Creating an app checks once that the folder of Swagger UI's files (api/docs.py) exists; the
    # tests create their apps inside the event loop.
    ("starlette/staticfiles.py", {"get_directories"}),
    # The first file served looks its media type up in the system's tables (/etc/mime.types),
    # which Python reads once per process.
    ("mimetypes.py", {"init"}),
{%- if cookiecutter.use_http_client %}
    # The tests build their settings inside the event loop (the service reads its own before
    # the loop starts): HTTP_CLIENT_CA_BUNDLE's check that the file exists.
    ("tests/conftest.py", {"make"}),
{%- endif %}
{%- if cookiecutter.use_opentelemetry %}
    # Creating an app detects its tracing resource attributes in a thread pool and waits for it:
    # once per process, before it serves (the tests create their apps inside the event loop).
    ("opentelemetry/sdk/resources/__init__.py", {"get_aggregated_resources"}),
{%- endif %}
{%- if cookiecutter.use_postgres %}
    # asyncpg, like libpq, looks for ~/.pgpass and ~/.postgresql/ certificates per new connection.
    ("asyncpg/connect_utils.py", {"_parse_connect_dsn_and_args"}),
    # Alembic is a one-shot command: its event loop serves nothing while it reads revisions.
    ("migrations/env.py", {"run_migrations"}),
{%- endif %}
]
{%- if cookiecutter.use_http_client %}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The tests run on asyncio's own loop, the service on uvloop (uvicorn takes it when it is
    installed): the HTTP client's transport tests run on both, as aiohttp drives its sockets
    on whichever loop runs it."""
    if item.path.name == "test_http_transport.py":
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
{%- endif %}


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which a blocking call (time.sleep, file or socket I/O, ...) runs inside
    the event loop, where it would stall every other request."""
    with blockbuster_ctx() as detector:
        for function in detector.functions.values():
            for filename, functions in BLOCKING_ALLOWED_IN:
                function.can_block_in(filename, functions)
        yield detector


@pytest.fixture
def worker_thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the app handed to a worker thread during the test. FastAPI runs a plain `def`
    endpoint or dependency there: a thread round trip on every request."""
    calls: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def recording_run_sync(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(getattr(func, "func", func), "__qualname__", repr(func)))
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", recording_run_sync)
    return calls


@pytest.fixture
def events() -> Iterator[list[EventDict]]:
    """The structlog events logged during the test, as dicts."""
    # merge_contextvars adds what the middleware binds (the request id), as in production.
    merge_context = structlog.contextvars.merge_contextvars
    with structlog.testing.capture_logs(processors=[merge_context]) as captured:
        yield captured


class Scrape:
    """One answer of GET /metrics, read by prometheus-client's own exposition parser."""

    def __init__(self, text: str) -> None:
        self.samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; 0 for one not there (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def label_values(self, name: str, label: str) -> set[str]:
        return {
            dict(labels)[label]
            for sample_name, labels in self.samples
            if sample_name == name and label in dict(labels)
        }


async def scrape(client: AsyncClient) -> Scrape:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return Scrape(response.text)


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[AsyncClient]:
    """Run `app`'s real lifespan and talk to it in-process, as a client of the example routes."""
    async with (
        LifespanManager(app) as manager,
        AsyncClient(
            transport=ASGITransport(manager.app, raise_app_exceptions=False),
            base_url="http://testserver",
            headers=auth_headers(),
        ) as client,
    ):
        yield client


@pytest.fixture
async def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with serve(app) as client:
        yield client
{%- if cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_rabbitmq %}


def assert_answered_unavailable(
    responses: list[Response], events: list[EventDict], resource: str
) -> None:
    """Each response is the short 503 of an outage of `resource`, each logged as a warning."""
    for response in responses:
        assert response.status_code == 503
        assert response.json() == {"detail": f"{resource} is unavailable"}
        assert response.headers["Retry-After"] == "1"
    unavailable = [e for e in events if e["event"] == "resource.unavailable"]
    logged = [(e["resource"], e["log_level"]) for e in unavailable]
    assert logged == [(resource, "warning")] * len(responses)
{%- endif %}
