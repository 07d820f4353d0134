{%- set secret_urls = cookiecutter.use_postgres or cookiecutter.use_redis or cookiecutter.use_rabbitmq -%}
"""Settings: bad or missing values stop the service with one line naming the variable."""

{% if secret_urls -%}
from collections.abc import Callable

{% endif -%}
import pytest

{% if secret_urls -%}
from {{ cookiecutter.package_name }}.settings import Settings, load_settings
{%- else -%}
from {{ cookiecutter.package_name }}.settings import load_settings
{%- endif %}
{%- set urls = (["ADMIN_DATABASE_URL"] if cookiecutter.use_postgres else [])
    + (["RABBITMQ_URL"] if cookiecutter.use_rabbitmq else [])
    + (["REDIS_URL"] if cookiecutter.use_redis else []) %}
{%- if urls %}
from tests.conftest import {{ urls | join(", ") }}
{%- endif %}

{% if secret_urls -%}
REQUIRED: dict[str, str] = {
{%- if cookiecutter.use_postgres %}
    "DATABASE_URL": ADMIN_DATABASE_URL,
{%- endif %}
{%- if cookiecutter.use_redis %}
    "REDIS_URL": REDIS_URL,
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
    "RABBITMQ_URL": RABBITMQ_URL,
{%- endif %}
}
{%- else -%}
REQUIRED: dict[str, str] = {}
{%- endif %}
{%- if cookiecutter.use_auth %}
# Required too: the identity provider, whose keys only the lifespan fetches.
AUTH_REQUIRED = {
    "AUTH_ISSUER": "https://idp.example.com/realms/main",
    "AUTH_AUDIENCE": "{{ cookiecutter.project_slug }}",
}
{%- endif %}


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> pytest.MonkeyPatch:
    """A clean environment with the required variables set, and no `.env` file in reach."""
    monkeypatch.chdir(str(tmp_path))
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
{%- if cookiecutter.use_auth %}
    for name, value in AUTH_REQUIRED.items():
        monkeypatch.setenv(name, value)
{%- endif %}
    return monkeypatch


def load_error(environment: pytest.MonkeyPatch) -> str:
    with pytest.raises(SystemExit) as exit_info:
        load_settings()
    message = str(exit_info.value.code)
    assert "\n" not in message
    return message


def test_the_environment_is_read(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("PORT", "9001")
    environment.setenv("LOG_LEVEL", "debug")
    environment.setenv("GRACEFUL_SHUTDOWN_TIMEOUT", "30")

    settings = load_settings()

    assert (settings.port, settings.log_level, settings.graceful_shutdown_timeout) == (
        9001,
        "DEBUG",
        30,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("LOG_FORMAT", "xml"),
        ("STARTUP_TIMEOUT", "0"),
        ("GRACEFUL_SHUTDOWN_TIMEOUT", "0"),
        ("FORWARDED_ALLOW_IPS", "127.0.0.1,ingress.local"),
{%- if cookiecutter.use_postgres %}
        ("DB_BEHIND_POOLER", "pgbouncer"),
{%- endif %}
{%- if cookiecutter.use_http_client %}
        ("HTTP_CLIENT_CA_BUNDLE", "/no/such/ca.pem"),
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
        ("RABBITMQ_URL", "amqp://app:s3cret@host:port/"),
        ("RABBITMQ_MAX_DELIVERIES", "0"),
{%- endif %}
{%- if cookiecutter.use_auth %}
        ("AUTH_ISSUER", "http://idp.example.com/realms/main"),  # keys over plain HTTP
        ("AUTH_ISSUER", "idp.example.com"),
        ("AUTH_JWKS_URL", "ftp://idp.example.com/keys"),
        ("AUTH_ALGORITHMS", "RS256,HS256"),
        ("AUTH_ALGORITHMS", "none"),
        ("AUTH_ALGORITHMS", ""),
        ("AUTH_MAX_TOKEN_BYTES", "10"),
{%- endif %}
    ],
)
def test_a_bad_value_names_the_variable(
    environment: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    environment.setenv(variable, value)

    assert load_error(environment).startswith(f"invalid settings: {variable}: ")
{%- if secret_urls %}


@pytest.mark.parametrize("variable", list(REQUIRED))
def test_a_missing_url_names_the_variable(environment: pytest.MonkeyPatch, variable: str) -> None:
    environment.delenv(variable)

    assert load_error(environment) == f"invalid settings: {variable}: Field required"


@pytest.mark.parametrize("variable", list(REQUIRED))
def test_a_url_of_the_wrong_kind_is_refused_without_echoing_it(
    environment: pytest.MonkeyPatch, variable: str
) -> None:
    environment.setenv(variable, "mysql://admin:s3cret-value@db.example/app")

    message = load_error(environment)

    assert message.startswith(f"invalid settings: {variable}: ")
    assert "s3cret-value" not in message


def test_secrets_stay_out_of_repr_and_str(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
{%- if cookiecutter.use_postgres %}
        database_url="postgresql://app:s3cret-pg@127.0.0.1:5432/app",
{%- endif %}
{%- if cookiecutter.use_redis %}
        redis_url="redis://:s3cret-redis@127.0.0.1:6379/0",
{%- endif %}
{%- if cookiecutter.use_rabbitmq %}
        rabbitmq_url="amqp://app:s3cret-amqp@127.0.0.1:5672/",
{%- endif %}
    )

    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert "s3cret" not in text
{%- endif %}
{%- if cookiecutter.use_postgres %}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:pw@db:5432/app",
        "postgres://app:pw@db:5432/app",
        "postgresql+asyncpg://app:pw@db:5432/app",
    ],
)
def test_postgres_urls_are_normalised_to_asyncpg(
    make_settings: Callable[..., Settings], url: str
) -> None:
    settings = make_settings(database_url=url)

    assert settings.database_url.get_secret_value() == "postgresql+asyncpg://app:pw@db:5432/app"


# A password with an '@' or ':' not percent-encoded: the parser takes part of it for the port.
def test_a_database_url_that_does_not_parse_is_refused_without_echoing_it(
    environment: pytest.MonkeyPatch,
) -> None:
    environment.setenv("DATABASE_URL", "postgresql://app:Xy@Pr0d:Secr3t@db.internal:5432/app")

    message = load_error(environment)

    assert message == (
        "invalid settings: DATABASE_URL: Value error, must look like"
        " postgresql+asyncpg://user:password@host:5432/database"
    )


def test_pools_beyond_the_connection_budget_are_refused(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("WORKERS", "4")
    environment.setenv("DB_POOL_SIZE", "10")
    environment.setenv("DB_MAX_OVERFLOW", "5")
{%- if cookiecutter.use_rabbitmq %}
    environment.setenv("DB_CONNECTION_BUDGET", "63")

    assert load_error(environment) == (
        "invalid settings: Value error, WORKERS x (DB_POOL_SIZE + DB_MAX_OVERFLOW + 1 for the"
        " outbox relay) = 64 database connections exceeds DB_CONNECTION_BUDGET = 63"
    )

    environment.setenv("DB_CONNECTION_BUDGET", "64")
{%- else %}
    environment.setenv("DB_CONNECTION_BUDGET", "59")

    assert load_error(environment) == (
        "invalid settings: Value error, WORKERS x (DB_POOL_SIZE + DB_MAX_OVERFLOW) = 60"
        " database connections exceeds DB_CONNECTION_BUDGET = 59"
    )

    environment.setenv("DB_CONNECTION_BUDGET", "60")
{%- endif %}
    assert load_settings().workers == 4
{%- endif %}
