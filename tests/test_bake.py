"""Bake every combination of options and check the result.

Cheap checks read the generated files. The ``slow`` checks install baked projects and run the
project's own lint, type and test commands, exactly as its README says: every combination is
linted and type-checked; the full suite runs on a set of combinations that covers every pair of
flag values (see SUITE_FLAGS).
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import itertools
import json
import re
import shutil
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from conftest import PYTHON_VERSIONS, TEMPLATE_DIR, Baker, ProjectVenv, StepResult, python_for
from markdown_links import broken_links


@dataclass(frozen=True)
class Resource:
    flag: str
    # Paths relative to the project; "{package}" stands for the package name.
    files: tuple[str, ...]
    # Distributions in [project].dependencies, and the modules src/ imports from them.
    dependencies: tuple[str, ...]
    modules: tuple[str, ...]

    def paths(self, package: str) -> list[str]:
        return [path.format(package=package) for path in self.files]

    def own_modules(self, package: str) -> list[str]:
        """Dotted names of the resource's modules under src/, e.g. ``my_service.api.cache``."""
        return [
            ".".join(Path(path).relative_to("src").with_suffix("").parts)
            for path in self.paths(package)
            if path.startswith("src/")
        ]


RESOURCES: dict[str, Resource] = {
    "postgres": Resource(
        flag="use_postgres",
        files=(
            "src/{package}/resources/postgres.py",
            "src/{package}/resources/postgres_pool.py",
            "src/{package}/api/notes.py",
            "src/{package}/models.py",
            "src/{package}/resources/schema.py",
            "scripts/create_database.py",
            "tests/test_postgres.py",
            "tests/test_postgres_silent.py",
            "tests/test_pgbouncer.py",
            "tests/test_migrations.py",
            "src/{package}/migrate.py",
            "src/{package}/migrations/env.py",
            "src/{package}/migrations/script.py.mako",
            "src/{package}/migrations/versions/0001_create_notes.py",
            "alembic.ini",
            "deploy/k8s/migrate-job.yaml",
            "docs/migrations.md",
        ),
        dependencies=("sqlalchemy", "asyncpg", "alembic"),
        modules=("sqlalchemy", "asyncpg", "alembic"),
    ),
    "redis": Resource(
        flag="use_redis",
        files=(
            "src/{package}/resources/redis.py",
            "src/{package}/api/cache.py",
            "tests/test_redis.py",
            "tests/test_redis_silent.py",
        ),
        dependencies=("redis",),
        modules=("redis",),
    ),
    "http_client": Resource(
        flag="use_http_client",
        files=(
            "src/{package}/resources/http_client.py",
            "src/{package}/resources/aiohttp_transport.py",
            "src/{package}/api/upstream.py",
            "tests/test_http_client.py",
            "tests/test_http_client_silent.py",
            "tests/test_http_transport.py",
            "tests/test_http_proxies.py",
        ),
        dependencies=("httpx", "aiohttp", "yarl"),
        modules=("httpx", "aiohttp", "yarl"),
    ),
    "opentelemetry": Resource(
        flag="use_opentelemetry",
        files=(
            "src/{package}/resources/tracing.py",
            "tests/test_tracing.py",
            "tests/otlp.py",
        ),
        dependencies=(
            "opentelemetry-api",
            "opentelemetry-sdk",
            "opentelemetry-exporter-otlp-proto-http",
            "opentelemetry-instrumentation-fastapi",
        ),
        modules=("opentelemetry",),
    ),
    "rabbitmq": Resource(
        flag="use_rabbitmq",
        files=(
            "src/{package}/resources/rabbitmq.py",
            "src/{package}/api/messages.py",
            "src/{package}/messages.py",
            "tests/test_rabbitmq.py",
            "tests/test_rabbitmq_silent.py",
            "tests/test_rabbitmq_outage.py",
            "docs/messages.md",
        ),
        dependencies=("aio-pika",),
        modules=("aio_pika",),
    ),
    "auth": Resource(
        flag="use_auth",
        files=(
            "src/{package}/auth.py",
            "src/{package}/resources/auth_keys.py",
            "src/{package}/api/principal.py",
            "tests/test_auth.py",
            "tests/identity_provider.py",
            "docs/authentication.md",
        ),
        dependencies=("pyjwt",),
        modules=("jwt",),
    ),
}
# Dependencies of two options together: the tracing instrumentation of each resource.
PAIR_DEPENDENCIES: dict[tuple[str, str], str] = {
    ("opentelemetry", "postgres"): "opentelemetry-instrumentation-sqlalchemy",
    ("opentelemetry", "redis"): "opentelemetry-instrumentation-redis",
    ("opentelemetry", "http_client"): "opentelemetry-instrumentation-httpx",
}
# Files of two options together, there only when both are on: the transactional outbox.
PAIR_FILES: dict[tuple[str, str], tuple[str, ...]] = {
    ("postgres", "rabbitmq"): (
        "src/{package}/outbox.py",
        "src/{package}/migrations/versions/0002_create_outbox.py",
        "tests/test_outbox.py",
    ),
}


@dataclass(frozen=True)
class Case:
    enabled: frozenset[str]
    project_name: str | None = None
    slug: str = "my-service"
    package: str = "my_service"
    # None: the default answer, the lowest choice.
    python_version: str | None = None

    @property
    def id(self) -> str:
        resources = "-".join(name for name in RESOURCES if name in self.enabled) or "no-resources"
        named = resources if self.project_name is None else f"{self.slug}-{resources}"
        return named if self.python_version is None else f"{named}-py{self.python_version}"

    @property
    def disabled(self) -> list[Resource]:
        return [resource for name, resource in RESOURCES.items() if name not in self.enabled]

    @property
    def context(self) -> dict[str, object]:
        context: dict[str, object] = {resource.flag: name in self.enabled for name, resource in RESOURCES.items()}
        if self.project_name is not None:
            context["project_name"] = self.project_name
        if self.python_version is not None:
            context["python_version"] = self.python_version
        return context

    def python(self) -> tuple[str, str]:
        """The interpreter of the case's python_version (its venv's), and that version."""
        return python_for(self.python_version or PYTHON_VERSIONS[0])


def case_of(flags: str) -> Case:
    """The case of flags written in RESOURCES order, e.g. "1010": postgres and http_client on."""
    return Case(frozenset(name for name, on in zip(RESOURCES, flags, strict=True) if on == "1"))


ALL_ON = case_of("1" * len(RESOURCES))
RENAMED_ALL_ON = Case(
    frozenset(RESOURCES), project_name="Billing API v2", slug="billing-api-v2", package="billing_api_v2"
)


def allowed(flags: str) -> bool:
    """What hooks/pre_gen_project.py lets bake: auth fetches its keys with the HTTP client."""
    enabled = dict(zip(RESOURCES, flags, strict=True))
    return not (enabled["auth"] == "1" and enabled["http_client"] == "0")


ALL_FLAGS = ["".join(flags) for flags in itertools.product("10", repeat=len(RESOURCES))]
CASES = [case_of(flags) for flags in ALL_FLAGS if allowed(flags)] + [RENAMED_ALL_ON]

# The combinations whose own test suite runs (RESOURCES order: postgres, redis, http_client,
# opentelemetry, rabbitmq, auth): all on, all off, the default answers, and four more so that
# every two flags meet in each pair of values they can take together (auth needs the HTTP
# client; test_suite_cases_cover_every_pair_of_flag_values): tracing with PostgreSQL alone,
# tracing with Redis alone, RabbitMQ alone, auth with the HTTP client alone. Four is the fewest
# that do it beside the first three, and these have the fewest resources on of any four that do
# (searched exhaustively): a resource on is its tests run once more. A suite takes a minute or
# more of real servers and processes; what the other combinations add is which files and lines
# they contain, and every combination is linted and type-checked.
SUITE_FLAGS = ["111111", "000000", "111000", "100100", "010100", "000010", "001001"]
# The other python_version choices, all on: the newest runs the whole suite, in a venv of that
# Python; the ones between are linted and type-checked for their target (ruff's target-version,
# mypy's python_version) by test_each_python_version_lints_and_type_checks.
NEWEST_PYTHON_ALL_ON = Case(frozenset(RESOURCES), python_version=PYTHON_VERSIONS[-1])
MIDDLE_PYTHON_CASES = [Case(frozenset(RESOURCES), python_version=version) for version in PYTHON_VERSIONS[1:-1]]
SUITE_CASES = [case_of(flags) for flags in SUITE_FLAGS] + [RENAMED_ALL_ON, NEWEST_PYTHON_ALL_ON]
# The two extra all-on runs repeat what the all-on case ran in full: each runs the part of the
# suite that its difference can break (a whole all-on suite takes about 8 minutes of real
# servers and processes). The renamed bake, against a PostgreSQL that checks passwords: the
# package's name in imports, the wheel, the migrations and everything that connects with a
# password. The newest Python: the lifespan, the server as a process, and the asyncio-heavy
# consumer, background tasks, auth and tracing.
SUITE_FILES: dict[Case, list[str]] = {
    RENAMED_ALL_ON: [
        "tests/test_app.py",
        "tests/test_lifespan.py",
        "tests/test_migrations.py",
        "tests/test_outbox.py",
        "tests/test_postgres.py",
        "tests/test_settings.py",
        "tests/test_wheel.py",
    ],
    NEWEST_PYTHON_ALL_ON: [
        "tests/test_app.py",
        "tests/test_auth.py",
        "tests/test_background.py",
        "tests/test_lifespan.py",
        "tests/test_rabbitmq.py",
        "tests/test_server.py",
        "tests/test_tracing.py",
    ],
}
# The longest suites run in parts, each a test item of its own that another xdist worker can take:
# they spend most of their time waiting on servers and timeouts, not on the CPU (the all-on suite
# alone: 8 minutes, 4 of CPU). The files of each part, a third of the all-on suite's time each
# (half of the defaults'); the last part runs the lints and every test file no part names, so a
# new test file is never left out.
SUITE_PARTS: dict[Case, list[list[str]]] = {
    ALL_ON: [
        ["tests/test_auth.py", "tests/test_rabbitmq.py", "tests/test_rabbitmq_outage.py", "tests/test_server.py"],
        [
            "tests/test_http_client.py",
            "tests/test_http_transport.py",
            "tests/test_migrations.py",
            "tests/test_outbox.py",
            "tests/test_postgres.py",
            "tests/test_tracing.py",
        ],
    ],
    case_of("111000"): [
        ["tests/test_http_client.py", "tests/test_http_transport.py", "tests/test_postgres.py", "tests/test_server.py"],
    ],
}


@dataclass(frozen=True)
class SuiteRun:
    """One test item that runs a baked case's own checks: its lints and its test files, or a part
    of its test files."""

    case: Case
    part: str = ""
    files: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    lints: bool = True

    @property
    def id(self) -> str:
        return f"{self.case.id}-{self.part}" if self.part else self.case.id

    def checks(self) -> list[tuple[str, list[str]]]:
        ignores = [f"--ignore={path}" for path in self.ignored]
        return [
            (name, [*argv, *self.files, *ignores] if name == "pytest" else argv)
            for name, argv in PROJECT_CHECKS
            if self.lints or name == "pytest"
        ]


# Test files that are the same in every bake that has them, and test modules that are the same
# too (no template syntax in either: test_flag_independent_files_are_the_same_in_every_bake):
# they run in the all-on suite only, since any other suite would repeat exactly the same tests.
FLAG_INDEPENDENT: dict[str, tuple[str, ...]] = {
    "tests/test_http_transport.py": (
        "src/{package}/resources/http_client.py",
        "src/{package}/resources/aiohttp_transport.py",
    ),
    "tests/test_http_proxies.py": ("src/{package}/resources/http_client.py",),
}


def suite_runs(case: Case) -> list[SuiteRun]:
    if case in SUITE_FILES:
        return [SuiteRun(case, files=tuple(SUITE_FILES[case]))]
    parts = SUITE_PARTS.get(case, [])
    skipped = () if case == ALL_ON else tuple(FLAG_INDEPENDENT)
    runs = [
        SuiteRun(case, f"part{number}", tuple(path for path in files if path not in skipped), lints=False)
        for number, files in enumerate(parts, 1)
    ]
    named = tuple(path for files in parts for path in files)
    last = SuiteRun(case, f"part{len(parts) + 1}" if parts else "", ignored=tuple(dict.fromkeys(named + skipped)))
    return [*runs, last]


# Longest first, the order in which conftest.py deals them to the workers: the parts, then the
# cases with the most resources (the most tests).
SUITE_RUNS = sorted(
    (run for case in SUITE_CASES for run in suite_runs(case)),
    key=lambda run: (run.case not in SUITE_PARTS, -len(run.case.enabled)),
)
LINT_ONLY_CASES = [case for case in CASES if case not in SUITE_CASES]

TEMPLATE_MARKERS = ("{{", "{%", "%}")
# GitHub Actions expressions look like Jinja; they are the only braces allowed, and only there.
GITHUB_EXPRESSION = re.compile(r"\$\{\{.*?\}\}")
# Tool caches and the like, should a checked project ever contain them.
IGNORED_DIRS = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}


@dataclass(frozen=True)
class Baked:
    case: Case
    project: Path

    def files(self) -> Iterator[Path]:
        for path in sorted(self.project.rglob("*")):
            if path.is_file() and not IGNORED_DIRS.intersection(path.relative_to(self.project).parts):
                yield path

    def python_files(self, under: str = ".") -> list[Path]:
        return [path for path in self.files() if path.suffix == ".py" and path.is_relative_to(self.project / under)]


@pytest.fixture(scope="module", params=CASES, ids=[case.id for case in CASES])
def baked(request: pytest.FixtureRequest, baker: Baker, tmp_path_factory: pytest.TempPathFactory) -> Baked:
    case: Case = request.param
    return Baked(case, baker.bake(tmp_path_factory.mktemp(case.id), case.context))


def contents(baked: Baked) -> dict[str, str]:
    """Each file of the project (tool caches aside), by its path, with a digest of its bytes."""
    return {
        str(path.relative_to(baked.project)): hashlib.sha256(path.read_bytes()).hexdigest() for path in baked.files()
    }


def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def imported_modules(path: Path, src: Path) -> set[str]:
    """Absolute dotted names of everything a module imports, with relative imports resolved."""
    package = path.relative_to(src).with_suffix("").parts[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            # `from pkg.resources import redis` may import the module pkg.resources.redis.
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def is_within(name: str, module: str) -> bool:
    return name == module or name.startswith(f"{module}.")


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"unparsable requirement {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def test_suite_cases_cover_every_pair_of_flag_values() -> None:
    suites = [case.enabled for case in SUITE_CASES]
    assert frozenset(RESOURCES) in suites
    assert frozenset() in suites
    defaults = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())
    assert frozenset(name for name, resource in RESOURCES.items() if defaults[resource.flag]) in suites
    bakeable = [case.enabled for case in CASES]
    for first, second in itertools.combinations(RESOURCES, 2):
        possible = {(first in enabled, second in enabled) for enabled in bakeable}
        met = {(first in enabled, second in enabled) for enabled in suites}
        assert met == possible, f"{first} and {second} never meet as {possible - met}"
    assert len(CASES) == len([flags for flags in ALL_FLAGS if allowed(flags)]) + 1 == 49
    assert sorted(SUITE_CASES + LINT_ONLY_CASES, key=str) == sorted([*CASES, NEWEST_PYTHON_ALL_ON], key=str)
    assert sorted(run.case.id for run in SUITE_RUNS if run.lints) == sorted(case.id for case in SUITE_CASES)
    other_versions = {case.python_version for case in [NEWEST_PYTHON_ALL_ON, *MIDDLE_PYTHON_CASES]}
    assert other_versions == set(PYTHON_VERSIONS[1:]), "every python_version choice is checked"


@pytest.mark.parametrize("case", [*SUITE_FILES, *SUITE_PARTS], ids=[case.id for case in [*SUITE_FILES, *SUITE_PARTS]])
def test_the_runs_name_test_files_their_bake_has(case: Case, baker: Baker, tmp_path: Path) -> None:
    project = baker.bake(tmp_path, case.context)
    named = [*SUITE_FILES.get(case, []), *(path for files in SUITE_PARTS.get(case, []) for path in files)]

    assert [name for name in named if not (project / name).is_file()] == []
    assert len(named) == len(set(named)), "a file in two parts runs twice"


def test_flag_independent_files_are_the_same_in_every_bake() -> None:
    """Their only template syntax is the package's name: no flag changes a line of them."""
    project_template = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"
    package_name = "{{ cookiecutter.package_name }}"
    for test_file, modules in FLAG_INDEPENDENT.items():
        for path in [test_file, *(module.format(package="{{cookiecutter.package_name}}") for module in modules)]:
            text = (project_template / path).read_text().replace(package_name, "")
            assert not any(marker in text for marker in TEMPLATE_MARKERS), f"{path} changes with the flags"


def test_compiled_templates_bake_the_same_project(baker: Baker, tmp_path: Path) -> None:
    case = ALL_ON
    kept = Baked(case, baker.bake(tmp_path / "kept", case.context))
    again = Baked(case, baker.bake(tmp_path / "again", case.context))
    fresh = Baked(case, replace(baker, keep_compiled_templates=False).bake(tmp_path / "fresh", case.context))

    assert contents(kept) == contents(fresh) == contents(again)


def test_project_is_named_after_slug_and_package(baked: Baked) -> None:
    assert baked.project.name == baked.case.slug
    assert (baked.project / "src" / baked.case.package / "__init__.py").is_file()


def test_no_template_syntax_left(baked: Baked) -> None:
    leftovers: list[str] = []
    for path in baked.files():
        relative = path.relative_to(baked.project)
        if any(marker in str(relative) for marker in TEMPLATE_MARKERS):
            leftovers.append(f"{relative}: template syntax in the file name")
        text = read_text(path)
        if text is None:
            continue
        if relative.parts[0] == ".github":
            text = GITHUB_EXPRESSION.sub("", text)
        for number, line in enumerate(text.splitlines(), start=1):
            if any(marker in line for marker in TEMPLATE_MARKERS):
                leftovers.append(f"{relative}:{number}: {line.strip()}")
    assert not leftovers, "unrendered template syntax:\n" + "\n".join(leftovers)


def test_resource_files_follow_flags(baked: Baked) -> None:
    package = baked.case.package
    unexpected = [path for resource in baked.case.disabled for path in resource.paths(package)]
    expected = [path for name in baked.case.enabled for path in RESOURCES[name].paths(package)]
    assert [path for path in unexpected if (baked.project / path).exists()] == [], "files of disabled resources"
    assert [path for path in expected if not (baked.project / path).exists()] == [], "missing resource files"
    for pair, paths in PAIR_FILES.items():
        both_on = set(pair) <= baked.case.enabled
        present = [(baked.project / path.format(package=package)).exists() for path in paths]
        assert present == [both_on] * len(paths), f"{paths}: {pair} on = {both_on}"


def test_src_does_not_import_disabled_resources(baked: Baked) -> None:
    src = baked.project / "src"
    forbidden = [
        module
        for resource in baked.case.disabled
        for module in (*resource.modules, *resource.own_modules(baked.case.package))
    ]
    offending = [
        f"{path.relative_to(baked.project)}: {name}"
        for path in baked.python_files("src")
        for name in sorted(imported_modules(path, src))
        if any(is_within(name, module) for module in forbidden)
    ]
    assert not offending, "imports of disabled resources:\n" + "\n".join(offending)


def test_runtime_dependencies_follow_flags(baked: Baked) -> None:
    pyproject = tomllib.loads((baked.project / "pyproject.toml").read_text())
    dependencies = {requirement_name(requirement) for requirement in pyproject["project"]["dependencies"]}
    for name, resource in RESOURCES.items():
        declared = sorted(dependencies.intersection(resource.dependencies))
        if name in baked.case.enabled:
            assert declared == sorted(resource.dependencies), f"{name} is on: [project].dependencies = {dependencies}"
        else:
            assert declared == [], f"{name} is off but [project].dependencies has {declared}"
    for pair, dependency in PAIR_DEPENDENCIES.items():
        both_on = set(pair) <= baked.case.enabled
        assert (dependency in dependencies) == both_on, f"{dependency}: {pair} on = {both_on}"


def test_warnings_of_leaks_and_deprecations_fail_the_project_tests(baked: Baked) -> None:
    pytest_options = tomllib.loads((baked.project / "pyproject.toml").read_text())["tool"]["pytest"]
    filters = pytest_options["ini_options"]["filterwarnings"]
    assert {"error::ResourceWarning", "error::DeprecationWarning"} <= set(filters)


def test_python_files_compile(baked: Baked) -> None:
    errors: list[str] = []
    for path in baked.python_files():
        try:
            compile(path.read_text(), str(path.relative_to(baked.project)), "exec", dont_inherit=True)
        except SyntaxError as exc:
            errors.append(f"{exc.filename}:{exc.lineno}: {exc.msg}")
    assert not errors, "syntax errors:\n" + "\n".join(errors)


def test_markdown_links_resolve(baked: Baked) -> None:
    broken = [problem for path in baked.files() if path.suffix == ".md" for problem in broken_links(path, baked.project)]
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)


# The page whose table documents every setting: its first column names them, in backticks.
SETTINGS_PAGE = "docs/settings.md"
SETTINGS_CLASSES = {"Settings", "DatabaseSettings"}
DOCUMENTED_NAME = re.compile(r"`([A-Z][A-Z0-9_]*)`")


def settings_read(settings_module: Path) -> set[str]:
    """The environment variables the service's settings classes read: their fields, upper-cased."""
    tree = ast.parse(settings_module.read_text())
    return {
        statement.target.id.upper()
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name in SETTINGS_CLASSES
        for statement in node.body
        if isinstance(statement, ast.AnnAssign)
        and isinstance(statement.target, ast.Name)
        and statement.target.id != "model_config"
    }


def settings_documented(page: str) -> set[str]:
    """The names in the first column of the page's tables."""
    rows = [line.split("|")[1] for line in page.splitlines() if line.startswith("|") and line.count("|") > 2]
    return {name for cell in rows for name in DOCUMENTED_NAME.findall(cell)}


def test_every_setting_is_documented_and_nothing_else(baked: Baked) -> None:
    read = settings_read(baked.project / "src" / baked.case.package / "settings.py")
    documented = settings_documented((baked.project / SETTINGS_PAGE).read_text())

    # The OpenTelemetry SDK reads its own variables (OTEL_*), which the page may document too.
    sdk_variables = {name for name in documented if name.startswith("OTEL_")}
    if "opentelemetry" not in baked.case.enabled:
        assert sdk_variables == set(), "tracing is off"

    assert sorted(read - documented) == [], f"settings that {SETTINGS_PAGE} does not document"
    assert sorted(documented - read - sdk_variables) == [], f"{SETTINGS_PAGE} documents settings nothing reads"


# The baked project's own checks, as its README documents them.
PROJECT_CHECKS: list[tuple[str, list[str]]] = [
    ("ruff check", ["ruff", "check", "."]),
    ("ruff format --check", ["ruff", "format", "--check", "."]),
    ("mypy", ["mypy"]),
    # -rfE: the failures' one-line summary comes last, within the tail a failed step shows
    # (a run's warnings summary, hypothesis's above all, can fill the tail otherwise).
    ("pytest", ["pytest", "-q", "-rfE", "-p", "no:cacheprovider"]),
]


# What leaked connections and event loops print, even when every test passes. (ResourceWarning
# and DeprecationWarning are errors in the project's own pytest configuration.)
LEAK_SIGNS = ("Event loop is closed", "non-checked-in connection")


def explain(result: StepResult) -> str:
    report = result.report()
    if result.name == "pytest" and result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED:
        report += "\n(pytest collected no tests: a baked project must test itself)"
    return report


def servers_for(case: Case, request: pytest.FixtureRequest) -> dict[str, str]:
    """The renamed all-on bake runs its suite against a PostgreSQL that checks passwords, as
    its CI does; the other bakes against the local servers."""
    if case.project_name is None:
        return {}
    return {"DATABASE_URL": request.getfixturevalue("scram_postgres_url")}


@pytest.mark.slow
@pytest.mark.parametrize("run", SUITE_RUNS, ids=[run.id for run in SUITE_RUNS])
def test_project_checks_pass(run: SuiteRun, baker: Baker, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    case = run.case
    # A bake of its own: tool caches written here must not reach the cheap checks' bake.
    project = baker.bake(tmp_path / "out", case.context)
    python, _ = case.python()
    venv = ProjectVenv(tmp_path / "venv", overrides=servers_for(case, request), python=python)

    installed = venv.create(project)
    if not installed.ok:
        pytest.fail(installed.report(), pytrace=False)

    files_before = contents(Baked(case, project))
    checks = run.checks()
    tests = [(name, argv) for name, argv in checks if name == "pytest"]
    lints = [(name, argv) for name, argv in checks if name != "pytest"]
    results = [venv.run(name, argv, cwd=project, timeout=900) for name, argv in tests]
    if lints:
        # As for the combinations that are only linted (see shared_venv), where the Python is
        # the shared venv's: the project's own venv would check the installed packages afresh,
        # most of mypy's time. After the tests, so that the first suites do not wait while the
        # first worker makes it. test_tooling.py lints in a project's own venv.
        lint_venv = venv if case.python_version else request.getfixturevalue("shared_venv")
        results += [lint_venv.run(name, argv, cwd=project, timeout=900) for name, argv in lints]
    failed = [result for result in results if not result.ok]
    if failed:
        pytest.fail("\n\n".join(explain(result) for result in failed), pytrace=False)
    # Nothing is left for the next run to meet: the project's files are as they were (tool
    # caches aside), and what its tests write elsewhere is their run's own (a new database and
    # Redis key prefix, dropped by its conftest at the end).
    files_after = contents(Baked(case, project))
    changed = sorted(
        path for path in files_before.keys() | files_after.keys() if files_before.get(path) != files_after.get(path)
    )
    assert not changed, f"the checks left, changed or removed files in the project: {changed}"
    leaks = [
        f"{result.name}: {sign!r}"
        for result in results
        if result.name.startswith("pytest")
        for sign in LEAK_SIGNS
        if sign in result.output
    ]
    assert not leaks, f"signs of leaked connections or loops in the output: {leaks}"


@contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (made if missing) against the other test workers."""
    with lock_file.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def shared_venv(baker: Baker, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> ProjectVenv:
    """One venv with the dependencies of every option, but no project, for the combinations that
    are only linted and type-checked: each would otherwise install a venv of its own, which costs
    more than its checks. A combination cannot lean on a package that its own pyproject.toml lacks
    without a cheap check noticing: test_runtime_dependencies_follow_flags reads what it declares,
    test_src_does_not_import_disabled_resources what it imports.

    The first test worker to need it makes it, for all of them, with a mypy cache of the installed
    packages: most of mypy's work (a cold run is 17 s of CPU, a warm one under 1 s). Each worker
    checks with a copy of that cache, so no two mypy runs write the same one; a project's own
    modules are checked afresh where their hashes differ from the cached ones."""
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent
    root = shared / "shared-venv"
    venv_dir, seed_cache, unfinished_cache = root / "venv", root / "mypy-cache", root / "mypy-cache-in-the-making"
    with exclusive(shared / "shared-venv.lock"):
        if not seed_cache.is_dir():
            # A worker that failed here left its attempt half-made: this one starts afresh.
            shutil.rmtree(root, ignore_errors=True)
            every_option = {resource.flag: True for resource in RESOURCES.values()}
            project = baker.bake(root / "out", every_option)
            venv = ProjectVenv(venv_dir, overrides={"MYPY_CACHE_DIR": str(unfinished_cache)})
            installed = venv.create(project, install_project=False)
            if not installed.ok:
                pytest.fail(installed.report(), pytrace=False)
            checked = venv.run("mypy", ["mypy"], cwd=project)
            if not checked.ok:
                pytest.fail(explain(checked), pytrace=False)
            unfinished_cache.rename(seed_cache)
    own_cache = tmp_path_factory.mktemp("mypy-cache")
    shutil.copytree(seed_cache, own_cache, dirs_exist_ok=True)
    return ProjectVenv(venv_dir, overrides={"MYPY_CACHE_DIR": str(own_cache)})


@pytest.mark.slow
@pytest.mark.parametrize("case", LINT_ONLY_CASES, ids=[case.id for case in LINT_ONLY_CASES])
def test_project_lints_and_type_checks(case: Case, baker: Baker, tmp_path: Path, shared_venv: ProjectVenv) -> None:
    project = baker.bake(tmp_path / "out", case.context)

    results = [shared_venv.run(name, argv, cwd=project) for name, argv in PROJECT_CHECKS if name != "pytest"]

    failed = [result for result in results if not result.ok]
    if failed:
        pytest.fail("\n\n".join(explain(result) for result in failed), pytrace=False)


@pytest.mark.slow
@pytest.mark.parametrize("case", MIDDLE_PYTHON_CASES, ids=[case.id for case in MIDDLE_PYTHON_CASES])
def test_each_python_version_lints_and_type_checks(
    case: Case, baker: Baker, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """The checks for the case's target, in a venv of that Python where the machine has one, else
    of the oldest newer one (the lock installs there too: its requires-python is a floor); ruff's
    target-version and mypy's python_version, the project's own settings, stay the target's."""
    assert case.python_version is not None
    project = baker.bake(tmp_path / "out", case.context)
    python, version = python_for(case.python_version, exact=False)
    record_property("python", f"{case.id}: checked in a venv of Python {version}")
    venv = ProjectVenv(tmp_path / "venv", python=python)

    installed = venv.create(project)
    if not installed.ok:
        pytest.fail(installed.report(), pytrace=False)
    results = [venv.run(name, argv, cwd=project) for name, argv in PROJECT_CHECKS if name != "pytest"]

    failed = [result for result in results if not result.ok]
    if failed:
        pytest.fail("\n\n".join(explain(result) for result in failed), pytrace=False)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={case.python_version}"
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + case.python_version.replace(".", "")
    assert pyproject["tool"]["mypy"]["python_version"] == case.python_version
