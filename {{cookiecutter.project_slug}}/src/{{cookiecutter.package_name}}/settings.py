"""Settings, read once from the environment (and `.env`) and validated before anything opens."""
{%- set typing_names = ["Annotated", "Literal"] + (["Self"] if cookiecutter.use_postgres else []) %}

from ipaddress import ip_network
from typing import {{ typing_names | join(", ") }}
{%- if cookiecutter.use_redis or cookiecutter.use_rabbitmq or cookiecutter.use_auth %}
from urllib.parse import urlsplit
{%- endif %}
{%- set secret_urls = cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_rabbitmq %}
{%- set pydantic_names = ["AfterValidator"]
    + ["BeforeValidator", "Field"]
    + (["FilePath"] if cookiecutter.use_http_client else [])
    + (["HttpUrl"] if cookiecutter.use_http_client else [])
    + (["SecretStr"] if secret_urls else [])
    + ["ValidationError"]
    + (["model_validator"] if cookiecutter.use_postgres else []) %}

from pydantic import (
{%- for name in pydantic_names %}
    {{ name }},
{%- endfor %}
)
{%- if cookiecutter.use_auth %}
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
{%- else %}
from pydantic_settings import BaseSettings, SettingsConfigDict
{%- endif %}
{%- if cookiecutter.use_postgres %}
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
{%- endif %}

Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _are_addresses(value: str) -> str:
    for item in filter(None, (part.strip() for part in value.split(","))):
        if item != "*":
            try:
                ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is no address or network: a comma-separated list such as"
                    " 127.0.0.1,10.0.0.0/8, or * for every peer"
                ) from None
    return value


AddressList = Annotated[str, AfterValidator(_are_addresses)]
{%- if cookiecutter.use_auth %}

# What a token may be signed with: asymmetric algorithms only (never `none`, never an HMAC).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def _are_asymmetric_algorithms(value: object) -> object:
    if not isinstance(value, str):
        return value
    algorithms = frozenset(filter(None, (part.strip() for part in value.split(","))))
    if not algorithms or not algorithms <= ASYMMETRIC_ALGORITHMS:
        raise ValueError(
            "a comma-separated list of asymmetric JWS algorithms, of "
            + ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
        )
    return algorithms


def https_or_loopback(value: str) -> str:
    """The provider's keys decide who gets in: they come over TLS, but from this host."""
    parts = urlsplit(value)
    loopback = parts.hostname in {"localhost", "127.0.0.1", "::1"}
    if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        raise ValueError("an https:// URL (http:// only for localhost)")
    return value


ProviderUrl = Annotated[str, AfterValidator(https_or_loopback)]
AlgorithmSet = Annotated[frozenset[str], NoDecode, BeforeValidator(_are_asymmetric_algorithms)]
{%- endif %}
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    BeforeValidator(lambda value: value.upper() if isinstance(value, str) else value),
]
{%- if cookiecutter.use_postgres %}


def _use_asyncpg_driver(value: SecretStr) -> SecretStr:
    try:
        url = make_url(value.get_secret_value())
    except ArgumentError:
        url = None
    except ValueError:  # a port that is no number, whose message may quote the password
        url = None
    if url is None or url.drivername not in {"postgres", "postgresql", "postgresql+asyncpg"}:
        # Never echo the value: it may hold a password.
        raise ValueError("must look like postgresql+asyncpg://user:password@host:5432/database")
    asyncpg_url = url.set(drivername="postgresql+asyncpg")
    return SecretStr(asyncpg_url.render_as_string(hide_password=False))


# A type of its own so that the migrations read DATABASE_URL exactly as the service does.
PostgresUrl = Annotated[SecretStr, AfterValidator(_use_asyncpg_driver)]
{%- endif %}
{%- if cookiecutter.use_redis %}


def _is_redis_url(value: SecretStr) -> SecretStr:
    url = urlsplit(value.get_secret_value())
    if url.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must look like redis://:password@host:6379/0")
    return value


RedisUrl = Annotated[SecretStr, AfterValidator(_is_redis_url)]
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}


def _is_amqp_url(value: SecretStr) -> SecretStr:
    try:
        url = urlsplit(value.get_secret_value())
        url.port  # noqa: B018 (raises on a port that is no number)
    except ValueError:
        url = None
    if url is None or url.scheme not in {"amqp", "amqps"} or not url.hostname:
        # Never echo the value: it may hold a password.
        raise ValueError("must look like amqp://user:password@host:5672/vhost")
    return value


RabbitMQUrl = Annotated[SecretStr, AfterValidator(_is_amqp_url)]
{%- endif %}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # The peers whose X-Forwarded-For and X-Forwarded-Proto uvicorn believes: addresses or
    # networks, comma-separated, or * for any. Only the machine itself by default (a sidecar
    # proxy); anyone else could claim any client address. Behind an ingress: its pods' network.
    forwarded_allow_ips: AddressList = "127.0.0.1"
    log_format: Literal["json", "console"] = "json"
    log_level: LogLevel = "INFO"
    # Health probes and metric scrapes come every few seconds from every pod: their request
    # lines would drown the rest at INFO.
    probe_log_level: LogLevel = "DEBUG"
    # GET /metrics and the request, pool and resource metrics behind it.
    metrics_enabled: bool = True
    # With WORKERS > 1, how often each worker writes its pools' figures for a scrape to sum;
    # with one worker they are read at scrape time.
    metrics_sample_seconds: Seconds = 1.0
    # GET /docs (Swagger UI, its files served by the service) and GET /openapi.json.
    docs_enabled: bool = True
    # Larger request bodies get a 413 before they are read: an unread body costs no memory,
    # while a JSON body takes several times its size once decoded. 1 MiB (nginx's default
    # client_max_body_size) is far above what the example routes accept.
    max_request_body_bytes: int = Field(default=1024 * 1024, ge=1)
    # The deadline for opening every resource, retries included.
    startup_timeout: Seconds = 10.0
    # How long each resource may take to close before we give up on it.
    shutdown_timeout: Seconds = 5.0
    # Worker processes of `python -m`; each runs its own lifespan and so its own pools.
    workers: int = Field(default=1, ge=1)
    # After SIGTERM, how long to keep serving with /health/ready at 503 so that load balancers
    # stop sending new requests before the listener closes (0: close it at once).
    drain_seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    # Then how long requests in flight may take to finish before uvicorn cancels them and the
    # resources close. Whole seconds: uvicorn takes an int.
    graceful_shutdown_timeout: int = Field(default=10, ge=1)
    # Background tasks (background.py) running at once; a spawn beyond gets a 503. Each task
    # holds memory and perhaps a pooled connection: a flood of requests must not pile up work.
    background_max_tasks: int = Field(default=100, ge=1)
    # How long one background task may run before it is cancelled (background.timed_out), so
    # that a stuck task cannot hold its slot for ever.
    background_task_timeout: Seconds = 30.0
    # After the last request, how long the background tasks still running may take to finish
    # before they are cancelled (0: cancel them at once).
    background_drain_seconds: float = Field(default=5.0, ge=0, allow_inf_nan=False)
    # Per-resource limit of one /health/ready check.
    readiness_timeout: Seconds = 1.0
    # Concurrent /health/ready calls share one check per resource; a finished check's result is
    # reused for this long (0: only while it runs), so a probe flood costs one check.
    readiness_cache_seconds: float = Field(default=1.0, ge=0)
{%- if cookiecutter.use_postgres %}

    database_url: PostgresUrl
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)
    # How long a request waits for a pooled connection before it gets a 503.
    db_pool_timeout: Seconds = 2.0
    # Opening a connection (TCP and authentication), and each statement, commit or rollback:
    # past these the connection is closed and the request gets a 503.
    db_connect_timeout: Seconds = 2.0
    db_command_timeout: Seconds = 3.0
    # A pooler in transaction mode (PgBouncer) between the service and PostgreSQL hands each
    # transaction to any of its server connections: no statement may stay prepared between
    # transactions. Off: each connection keeps its prepared statements, one round trip fewer.
    db_behind_pooler: bool = False
    # The most connections this process may hold; docs/deployment.md, "Scaling out", has the
    # sizing rule.
    db_connection_budget: int = Field(default=50, ge=1)
    # /health/ready answers 503 while a migration shipped in the package is not applied to the
    # database. false: the schema is managed otherwise.
    db_schema_check: bool = True
{%- endif %}
{%- if cookiecutter.use_redis %}

    redis_url: RedisUrl
    # Every key the service writes starts with it, so that services (and test runs) sharing
    # one Redis database never read or delete each other's keys.
    redis_key_prefix: str = {{ (cookiecutter.project_slug ~ ":") | tojson }}
    redis_max_connections: int = Field(default=50, ge=1)
    # Opening a connection, and each command (a command is never retried after a timeout).
    redis_connect_timeout: Seconds = 1.0
    redis_socket_timeout: Seconds = 1.0
{%- endif %}
{%- if cookiecutter.use_http_client %}

    http_client_base_url: HttpUrl | None = None
    http_client_timeout: Seconds = 5.0
    http_client_connect_timeout: Seconds = 2.0
    http_client_max_connections: int = Field(default=100, ge=1)
    # Seconds an idle connection is kept for reuse: below the 5 s after which uvicorn and
    # Node.js close one, so that a call does not take a connection the upstream is closing.
    http_client_keepalive_expiry: Seconds = 4.0
    # How long a call waits for a free connection when all are busy, before it gets a 503.
    http_client_pool_timeout: Seconds = 1.0
    # Whether HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY, SSL_CERT_FILE and SSL_CERT_DIR apply
    # to the client, as they do to any httpx client.
    http_client_trust_env: bool = True
    # A PEM file of the certificate authorities to trust for https upstreams (a private CA), in
    # place of the public ones.
    http_client_ca_bundle: FilePath | None = None
    # An upstream's response head: the longest line (status or header) and the most header lines,
    # aiohttp's defaults. Past either the call fails, so a hostile head costs at most about 1 MiB.
    http_client_max_header_bytes: int = Field(default=8190, ge=1024)
    http_client_max_headers: int = Field(default=128, ge=8)
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}

    rabbitmq_url: RabbitMQUrl
    # The example consumer's queue; the exchange and the dead-letter exchange and queue are
    # named after it (docs/messages.md).
    rabbitmq_queue: str = Field(default={{ cookiecutter.project_slug | tojson }}, min_length=1, max_length=200)
    # Messages the consumer is handed before it acknowledges any: how many it handles at once.
    rabbitmq_prefetch: int = Field(default=10, ge=1, le=65535)
    # A publish that the broker has not confirmed by then is a 503.
    rabbitmq_publish_timeout: Seconds = 2.0
    rabbitmq_connect_timeout: Seconds = 2.0
    # Seconds; a broker silent for 3 x (RABBITMQ_HEARTBEAT + 1) seconds is given up and the
    # connection reopened.
    rabbitmq_heartbeat: int = Field(default=10, ge=1)
    # Deliveries of a message whose handler fails before it goes to the dead-letter queue.
    rabbitmq_max_deliveries: int = Field(default=5, ge=1)
    # A handler still running after this long has failed (its message is retried).
    rabbitmq_handler_timeout: Seconds = 30.0
    # A failed message is returned to the queue after RABBITMQ_RETRY_DELAY x 2^(delivery - 1)
    # seconds, at most RABBITMQ_RETRY_DELAY_MAX: its retries span a passing outage instead of
    # burning through RABBITMQ_MAX_DELIVERIES in a second. The same pauses space the retries of
    # a message held while the store of handled ids does not answer.
    rabbitmq_retry_delay: Seconds = 1.0
    rabbitmq_retry_delay_max: Seconds = 30.0
    # A larger message goes to the dead-letter queue unread: decoding it would hold up the
    # event loop (126 MB of JSON: 1.8 s), and each of RABBITMQ_PREFETCH may be that large.
    rabbitmq_max_message_bytes: int = Field(default=1024 * 1024, ge=1024)
    # At shutdown, how long the messages being handled may take to finish before they are
    # cancelled (and, unacknowledged, delivered again to the next consumer).
    rabbitmq_drain_seconds: float = Field(default=5.0, ge=0)
{%- endif %}
{%- if cookiecutter.use_auth %}

    # The identity provider, exactly as its tokens' `iss` claim names it; its keys are found
    # through its /.well-known/openid-configuration, unless AUTH_JWKS_URL names them.
    auth_issuer: ProviderUrl
    # What a token's `aud` must contain: this service's name at the provider.
    auth_audience: str = Field(min_length=1)
    auth_jwks_url: ProviderUrl | None = None
    auth_algorithms: AlgorithmSet = ASYMMETRIC_ALGORITHMS
    # Seconds of clock difference allowed around `exp`, `nbf` and `iat`.
    auth_leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    # The keys are fetched again this often, and for a token whose key id is unknown, but not
    # more often than AUTH_KEYS_MIN_REFRESH_SECONDS (a flood of made-up key ids).
    auth_keys_refresh_seconds: Seconds = 900.0
    auth_keys_min_refresh_seconds: float = Field(default=30.0, ge=0)
    # One fetch of the keys (discovery included) that takes longer has failed.
    auth_keys_fetch_timeout: Seconds = 5.0
    # A discovery document or key set larger than this is refused (they are a few kB).
    auth_keys_max_bytes: int = Field(default=256 * 1024, ge=1024)
    # A longer bearer token is refused before it is parsed (real ones are 1 to 4 kB).
    auth_max_token_bytes: int = Field(default=8192, ge=512)
{%- endif %}
{%- if cookiecutter.use_postgres and cookiecutter.use_rabbitmq %}

    # false: this process writes events to the outbox but relays none, and opens no connection
    # for it: where other processes relay (a Deployment of the consumer's own, say).
    outbox_relay_enabled: bool = True
    # The outbox relay (outbox.py) publishes an event as soon as its transaction commits in this
    # process; it also looks for pending events this often: those of other replicas whose relay
    # is failing, and those a stopped or crashed process left behind. Two cheap queries (the
    # batch, through an index; the count and age of the pending events, for the metrics).
    outbox_poll_seconds: Seconds = 1.0
    # Pending events one pass takes, locks and publishes concurrently (each with its confirm).
    outbox_batch_size: int = Field(default=100, ge=1, le=10_000)
    # After a failed pass (the broker or the database down) the relay waits OUTBOX_POLL_SECONDS,
    # doubling with each failure in a row up to this: after an outage the events go out within
    # it, and a broker that is down is not hammered meanwhile.
    outbox_max_backoff_seconds: Seconds = 10.0
{%- endif %}
{%- if cookiecutter.use_postgres %}

    @model_validator(mode="after")
    def _pools_fit_the_connection_budget(self) -> Self:
{%- if cookiecutter.use_rabbitmq %}
        # Each worker's outbox relay holds one connection of its own besides its pool.
        connections = self.workers * (self.db_pool_size + self.db_max_overflow + 1)
        if connections > self.db_connection_budget:
            raise ValueError(
                "WORKERS x (DB_POOL_SIZE + DB_MAX_OVERFLOW + 1 for the outbox relay) ="
                f" {connections} database connections exceeds DB_CONNECTION_BUDGET ="
                f" {self.db_connection_budget}"
            )
{%- else %}
        connections = self.workers * (self.db_pool_size + self.db_max_overflow)
        if connections > self.db_connection_budget:
            raise ValueError(
                f"WORKERS x (DB_POOL_SIZE + DB_MAX_OVERFLOW) = {connections} database connections"
                f" exceeds DB_CONNECTION_BUDGET = {self.db_connection_budget}"
            )
{%- endif %}
        return self
{%- endif %}


def load_settings() -> Settings:
    """Read the settings, or exit with one line naming every bad variable."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise SystemExit(describe_invalid_settings(exc)) from None
    return settings
{%- if cookiecutter.use_postgres %}


class DatabaseSettings(BaseSettings):
    """DATABASE_URL, from the environment or `.env`, read as the service reads it, and what the
    migrations need besides: for them and scripts/create_database.py, which must not demand
    every other required variable (REDIS_URL, ...)."""

    model_config = Settings.model_config

    database_url: PostgresUrl
    # A migration's statement that waits longer for a table's lock fails (lock_timeout): while
    # it waits, every request that touches the table queues behind it.
    db_migration_lock_timeout: Seconds = 10.0


def load_database_settings() -> DatabaseSettings:
    """DATABASE_URL and the rest, or exit with one line saying what is wrong (never a value)."""
    try:
        return DatabaseSettings()
    except ValidationError as exc:
        raise SystemExit(describe_invalid_settings(exc)) from None


def load_database_url() -> URL:
    return make_url(load_database_settings().database_url.get_secret_value())
{%- endif %}


def describe_invalid_settings(exc: ValidationError) -> str:
    """One line naming every bad variable; never its value, which may hold a password."""
    problems = "; ".join(_describe(error["loc"], error["msg"]) for error in exc.errors())
    return f"invalid settings: {problems}"


def _describe(location: tuple[int | str, ...], message: str) -> str:
    variable = ".".join(map(str, location)).upper()
    # A rule across several variables has no location: its message names them.
    return f"{variable}: {message}" if variable else message
