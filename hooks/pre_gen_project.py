"""Reject answers that would bake a broken project, before any file is written.

Cookiecutter removes the half-made project folder when this hook exits non-zero.
"""

import keyword
import re
import sys

PROJECT_NAME = {{ cookiecutter.project_name | tojson }}
PROJECT_SLUG = {{ cookiecutter.project_slug | tojson }}
PACKAGE_NAME = {{ cookiecutter.package_name | tojson }}
USE_AUTH = {{ cookiecutter.use_auth }}
USE_HTTP_CLIENT = {{ cookiecutter.use_http_client }}

# Modules the generated service or its tests import, beyond the standard library: a package with one of these names
# would shadow the real module on sys.path and break the service at import time.
SHADOWED_IMPORTS = {
    "aio_pika",
    "aiormq",
    "alembic",
    "anyio",
    "cryptography",
    "asgi_lifespan",
    "asyncpg",
    "fastapi",
    "httpx",
    "jwt",
    "mypy",
    "opentelemetry",
    "prometheus_client",
    "pamqp",
    "pydantic",
    "pydantic_settings",
    "pytest",
    "redis",
    "ruff",
    "sqlalchemy",
    "starlette",
    "structlog",
    "test",  # the standard library's own test package, missing from sys.stdlib_module_names
    "tests",
    "uvicorn",
}


def name_error(name: str) -> str | None:
    # The name lands in Python docstrings and Markdown headings.
    if not name.strip() or any(char in name for char in '"\\\n'):
        return f"project_name {name!r} is invalid: use one non-empty line without double quotes or backslashes"
    return None


def slug_error(slug: str) -> str | None:
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", slug):
        return (
            f"project_slug {slug!r} is invalid: use lowercase letters, digits and single hyphens, "
            "starting with a letter (e.g. 'billing-api')"
        )
    return None


def package_error(name: str) -> str | None:
    if not name.isidentifier() or not name.isascii():
        return f"package_name {name!r} is not a Python identifier: use lowercase letters, digits and underscores"
    if name != name.lower():
        return f"package_name {name!r} must be lowercase"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return f"package_name {name!r} is a Python keyword: choose another name"
    if name in sys.stdlib_module_names or name in SHADOWED_IMPORTS:
        return f"package_name {name!r} would shadow the module {name!r} the service imports: choose another name"
    return None


def auth_error() -> str | None:
    if USE_AUTH and not USE_HTTP_CLIENT:
        return (
            "use_auth needs use_http_client: the identity provider's keys are fetched by the service's "
            "shared HTTP client, so that its timeouts, proxies, CA bundle and metrics apply; answer yes to both"
        )
    return None


def main() -> int:
    checks = (name_error(PROJECT_NAME), slug_error(PROJECT_SLUG), package_error(PACKAGE_NAME), auth_error())
    errors = [error for error in checks if error]
    for error in errors:
        print(f"ERROR: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
