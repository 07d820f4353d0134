"""Delete the files of the resources and features the user switched off, write uv.lock, then
print the next steps: the README's quick start (Run it), from where the bake was started."""

import os
import shlex
import shutil
import sys
from pathlib import Path

PACKAGE = Path("src") / {{ cookiecutter.package_name | tojson }}
PROJECT_SLUG = {{ cookiecutter.project_slug | tojson }}
PYTHON_VERSION = {{ cookiecutter.python_version | tojson }}

FILES_BY_RESOURCE = {
    "postgres": [
        PACKAGE / "resources" / "postgres.py",
        PACKAGE / "resources" / "postgres_pool.py",
        PACKAGE / "api" / "notes.py",
        PACKAGE / "models.py",
        PACKAGE / "resources" / "schema.py",
        Path("scripts") / "create_database.py",
        Path("tests") / "test_postgres.py",
        Path("tests") / "test_postgres_silent.py",
        Path("tests") / "test_pgbouncer.py",
        Path("tests") / "test_migrations.py",
        PACKAGE / "migrate.py",
        PACKAGE / "migrations",
        Path("alembic.ini"),
        Path("deploy") / "k8s" / "migrate-job.yaml",
        Path("docs") / "migrations.md",
    ],
    "redis": [
        PACKAGE / "resources" / "redis.py",
        PACKAGE / "api" / "cache.py",
        Path("tests") / "test_redis.py",
        Path("tests") / "test_redis_silent.py",
    ],
    "http_client": [
        PACKAGE / "resources" / "http_client.py",
        PACKAGE / "resources" / "aiohttp_transport.py",
        PACKAGE / "api" / "upstream.py",
        Path("tests") / "test_http_client.py",
        Path("tests") / "test_http_client_silent.py",
        Path("tests") / "test_http_transport.py",
        Path("tests") / "test_http_proxies.py",
    ],
    "opentelemetry": [
        PACKAGE / "resources" / "tracing.py",
        Path("tests") / "test_tracing.py",
        Path("tests") / "otlp.py",
    ],
    "rabbitmq": [
        PACKAGE / "resources" / "rabbitmq.py",
        PACKAGE / "api" / "messages.py",
        PACKAGE / "messages.py",
        Path("tests") / "test_rabbitmq.py",
        Path("tests") / "test_rabbitmq_silent.py",
        Path("tests") / "test_rabbitmq_outage.py",
        Path("docs") / "messages.md",
    ],
    "auth": [
        PACKAGE / "auth.py",
        PACKAGE / "resources" / "auth_keys.py",
        PACKAGE / "api" / "principal.py",
        Path("tests") / "test_auth.py",
        Path("tests") / "identity_provider.py",
        Path("docs") / "authentication.md",
    ],
}
# Only needed when both resources are on (the transactional outbox: PostgreSQL writes the
# events, RabbitMQ takes them): deleted when either is off.
FILES_OF_BOTH = {
    ("postgres", "rabbitmq"): [
        PACKAGE / "outbox.py",
        PACKAGE / "migrations" / "versions" / "0002_create_outbox.py",
        Path("tests") / "test_outbox.py",
    ],
}
ENABLED = {
    "postgres": {{ cookiecutter.use_postgres }},
    "redis": {{ cookiecutter.use_redis }},
    "http_client": {{ cookiecutter.use_http_client }},
    "opentelemetry": {{ cookiecutter.use_opentelemetry }},
    "rabbitmq": {{ cookiecutter.use_rabbitmq }},
    "auth": {{ cookiecutter.use_auth }},
}
# The commands of the README's quick start (Run it), which tests/test_hooks.py holds them to.
QUICK_START = [
    "make install",
    "cp .env.example .env",
{%- if cookiecutter.use_postgres %}
    "make migrate",
{%- endif %}
    "make run",
]
# The uv.lock of every variant (python_version and flags), in parts; see its first lines.
LOCK_DATA = Path("uv.lock.variants")
PACKAGE_SEPARATOR = "\n[[package]]\n"
# Only needed when the service owns at least one resource (the tracer provider is one).
FILES_OF_ANY_RESOURCE = [
    PACKAGE / "resources",
    Path("tests") / "test_lifespan.py",
]


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def shell_path(project: Path) -> str:
    """The project's path for the user's `cd`: relative to the shell's working directory ($PWD:
    this hook runs inside the project) when it is there, else absolute."""
    shell_dir = os.environ.get("PWD")
    if shell_dir and project.is_relative_to(Path(shell_dir).resolve()):
        project = project.relative_to(Path(shell_dir).resolve())
    return shlex.quote(str(project))


def package_name(package: str) -> str:
    """A [[package]] section starts with its line `name = "..."`."""
    return package.split('"', 2)[1]


def lock_for(data: str, variant: str) -> str:
    """This variant's uv.lock: its header and its packages, sorted by name as uv writes them,
    the placeholder replaced by the project's name (the project is one of the packages)."""
    settings: dict[str, str] = {}
    sections: list[tuple[str, int, list[str]]] = []  # kind, mask of variants, lines
    for line in data.splitlines(keepends=True):
        if line.startswith("%% "):
            key, _, value = line[3:].strip().partition(" ")
            if key in {"header", "package"}:
                sections.append((key, int(value, 16), []))
            else:
                settings[key] = value
        elif sections:
            sections[-1][2].append(line)
    variants = settings["variants"].split()
    if variant not in variants:
        sys.exit(f"ERROR: the template has no uv.lock for {variant}: run `make lock` in the template")
    bit = 1 << variants.index(variant)
    placeholder = f'"{settings["placeholder"]}"'
    parts: dict[str, list[str]] = {"header": [], "package": []}
    for kind, mask, lines in sections:
        if mask & bit:
            parts[kind].append("".join(lines).replace(placeholder, f'"{PROJECT_SLUG}"'))
    (header,) = parts["header"]
    # A stable sort: two versions of one package (a forked resolution) stay in the data's order.
    return PACKAGE_SEPARATOR.join([header, *sorted(parts["package"], key=package_name)])


def write_lock() -> None:
    variant = PYTHON_VERSION + "-" + "".join("1" if enabled else "0" for enabled in ENABLED.values())
    Path("uv.lock").write_text(lock_for(LOCK_DATA.read_text(encoding="utf-8"), variant), encoding="utf-8")
    LOCK_DATA.unlink()


def main() -> None:
    write_lock()
    # First: a resource that is off may delete the folder one of them is in.
    for pair, paths in FILES_OF_BOTH.items():
        if not all(ENABLED[resource] for resource in pair):
            for path in paths:
                remove(path)
    for resource, enabled in ENABLED.items():
        if not enabled:
            for path in FILES_BY_RESOURCE[resource]:
                remove(path)
    if not any(ENABLED.values()):
        for path in FILES_OF_ANY_RESOURCE:
            remove(path)
    print("\n".join([f"cd {shell_path(Path.cwd())}", *QUICK_START]))


if __name__ == "__main__":
    main()
