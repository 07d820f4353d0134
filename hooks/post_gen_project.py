"""Delete the files of the resources and features the user switched off, then print the next
steps: the README's quick start (Run it), from the directory the bake was started in."""

import os
import shlex
import shutil
from pathlib import Path

PACKAGE = Path("src") / {{ cookiecutter.package_name | tojson }}

FILES_BY_RESOURCE = {
    "postgres": [
        PACKAGE / "resources" / "postgres.py",
        PACKAGE / "api" / "notes.py",
        PACKAGE / "models.py",
        PACKAGE / "resources" / "schema.py",
        Path("scripts") / "create_database.py",
        Path("tests") / "test_postgres.py",
        Path("tests") / "test_postgres_silent.py",
        Path("tests") / "test_migrations.py",
        Path("alembic.ini"),
        Path("migrations"),
    ],
    "redis": [
        PACKAGE / "resources" / "redis.py",
        PACKAGE / "api" / "cache.py",
        Path("tests") / "test_redis.py",
        Path("tests") / "test_redis_silent.py",
    ],
    "http_client": [
        PACKAGE / "resources" / "http_client.py",
        PACKAGE / "api" / "upstream.py",
        Path("tests") / "test_http_client.py",
        Path("tests") / "test_http_client_silent.py",
    ],
    "opentelemetry": [
        PACKAGE / "resources" / "tracing.py",
        Path("tests") / "test_tracing.py",
        Path("tests") / "otlp.py",
    ],
}
ENABLED = {
    "postgres": {{ cookiecutter.use_postgres }},
    "redis": {{ cookiecutter.use_redis }},
    "http_client": {{ cookiecutter.use_http_client }},
    "opentelemetry": {{ cookiecutter.use_opentelemetry }},
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


def main() -> None:
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
