"""Shared helpers for the template's own test suite: baking projects and running their tools."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import jinja2
import pytest
from cookiecutter import generate  # type: ignore[import-untyped]
from cookiecutter.main import cookiecutter  # type: ignore[import-untyped]
from cookiecutter.utils import create_env_with_context  # type: ignore[import-untyped]
from uv import find_uv_bin

import container_engine

TEMPLATE_DIR = Path(__file__).resolve().parent.parent


def load_project_servers() -> ModuleType:
    """The baked projects' tests/servers.py, loaded from the template (it holds no template
    syntax): the template's tests start their private servers with the projects' own code."""
    path = TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "tests" / "servers.py"
    spec = importlib.util.spec_from_file_location("project_servers", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first: its dataclasses look their module up while it runs (postponed annotations).
    sys.modules[spec.name] = module
    # No __pycache__ in the template: every bake would copy it into the project.
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


project_servers = load_project_servers()

# The python_version choices, lowest (the default) first.
PYTHON_VERSIONS: list[str] = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())["python_version"]


def find_python(version: str) -> str | None:
    """An interpreter of this Python version on this machine (scripts/python.sh --find: on PATH,
    pyenv's, or the one scripts/python.sh installed), or None."""
    completed = subprocess.run(
        ["bash", str(TEMPLATE_DIR / "scripts" / "python.sh"), "--find", version],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return completed.stdout.strip() if completed.returncode == 0 else None


def python_for(version: str, *, exact: bool = True) -> tuple[str, str]:
    """(interpreter, its version) for a project whose requires-python is >=version: one of that
    version or, unless exact, the oldest newer one there is. None there: skipped; in CI a
    failure (.ci/run installs the newest choice with scripts/python.sh)."""
    candidates = [version] if exact else PYTHON_VERSIONS[PYTHON_VERSIONS.index(version) :]
    for candidate in candidates:
        found = find_python(candidate)
        if found is not None:
            return found, candidate
    container_engine.skip_or_fail(f"no Python {' or '.join(candidates)} on this machine (see scripts/python.sh)")


# Lines of a failed step's output shown in the assertion message.
TAIL_LINES = 60


class CompiledTemplates(jinja2.BytecodeCache):
    """The template's files compiled by Jinja, kept in memory for the next bake in this process.
    cookiecutter makes a new Jinja environment for every bake, which parses and compiles every
    file again: two thirds of a bake's time, and the template tests bake several hundred times.
    Jinja stores each file's code with a checksum of its source and compiles a changed file
    afresh (test_compiled_templates_bake_the_same_project checks the result is the same)."""

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


COMPILED_TEMPLATES = CompiledTemplates()


def environment_keeping_compiled_templates(context: dict[str, Any]) -> jinja2.Environment:
    environment = create_env_with_context(context)
    environment.bytecode_cache = COMPILED_TEMPLATES
    return environment


@dataclass(frozen=True)
class Baker:
    """Bakes the template, keeping cookiecutter's replay files out of the home directory."""

    config_file: Path
    # False: every file compiled afresh, as the cookiecutter command does.
    keep_compiled_templates: bool = True

    def bake(self, output_dir: Path, context: Mapping[str, object]) -> Path:
        """Bake with the Python API and return the generated project directory."""
        make_environment = (
            environment_keeping_compiled_templates if self.keep_compiled_templates else create_env_with_context
        )
        with mock.patch.object(generate, "create_env_with_context", make_environment):
            project = cookiecutter(
                str(TEMPLATE_DIR),
                no_input=True,
                output_dir=str(output_dir),
                extra_context=dict(context),
                config_file=str(self.config_file),
            )
        return Path(project)

    def run_cli(
        self, output_dir: Path, answers: Mapping[str, str], cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Bake with the command line, as a user would, capturing stdout and stderr separately;
        from `cwd` as a shell's working directory (its $PWD too), or else from the test run's."""
        argv = [
            sys.executable,
            "-m",
            "cookiecutter",
            str(TEMPLATE_DIR),
            "--no-input",
            "--config-file",
            str(self.config_file),
            "-o",
            str(output_dir),
            *(f"{key}={value}" for key, value in answers.items()),
        ]
        env = None if cwd is None else os.environ | {"PWD": str(cwd)}
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def baker(tmp_path_factory: pytest.TempPathFactory) -> Baker:
    home = tmp_path_factory.mktemp("cookiecutter-home")
    config_file = home / "config.yaml"
    # JSON strings are valid YAML scalars, and safe for any path.
    config_file.write_text(
        f"replay_dir: {json.dumps(str(home / 'replay'))}\n"
        f"cookiecutters_dir: {json.dumps(str(home / 'cookiecutters'))}\n"
    )
    return Baker(config_file)


@dataclass(frozen=True)
class StepResult:
    name: str
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def report(self) -> str:
        tail = "\n".join(self.output.rstrip().splitlines()[-TAIL_LINES:])
        return f"--- step {self.name!r} failed (exit {self.returncode}); last lines of its output:\n{tail}"


def run_step(name: str, argv: Sequence[str | Path], cwd: Path, env: Mapping[str, str], timeout: float) -> StepResult:
    """Run one command, merging stdout and stderr; a timeout is reported as a failure."""
    try:
        completed = subprocess.run(
            [str(arg) for arg in argv],
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return StepResult(name, -1, f"{output}\n[timed out after {timeout:.0f}s]")
    return StepResult(name, completed.returncode, completed.stdout)


@contextmanager
def process(
    argv: Sequence[str | Path], env: Mapping[str, str], log: Path, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A process with its output in `log`, stopped with SIGTERM (then killed) at the end."""
    with log.open("wb") as output:
        started = subprocess.Popen(
            [str(arg) for arg in argv], env=dict(env), cwd=cwd, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        yield started
    finally:
        started.send_signal(signal.SIGTERM)
        try:
            started.wait(timeout=15)
        except subprocess.TimeoutExpired:
            started.kill()
            started.wait()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (127.0.0.1 only)
        return json.load(response)


def psql(url: str, sql: str) -> str:
    """Run `sql` with psql against the libpq URL `url`; its output, stripped."""
    completed = subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"psql failed: {sql}\n{completed.stderr}")
    return completed.stdout.strip()


@pytest.fixture(scope="session")
def scram_postgres_url() -> Iterator[str]:
    """The admin URL of a private PostgreSQL that checks passwords (scram-sha-256), as the
    generated CI's postgres container and managed servers do; the local one trusts everyone."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(project_servers.REQUIRE_SERVERS, "1")  # no initdb here is a failure
        with project_servers.private_postgres(password="scram-only-pw") as server:
            yield server.url


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[container_engine.DockerEngine]:
    """A private dockerd (one per test worker) holding the stand-in base image.

    Skipped where docker.io or debootstrap is missing, or without root; in CI a failure.
    """
    missing = container_engine.missing_requirements()
    if missing:
        container_engine.skip_or_fail("; ".join(missing))
    stand_in = container_engine.stand_in_base(container_engine.StandInRecipe.from_host(), container_engine.cache_dir())
    with container_engine.private_dockerd(tmp_path_factory.mktemp("dockerd")) as engine:
        engine.import_stand_in(stand_in)
        made = f"made in {stand_in.build_seconds:.0f} s" if stand_in.build_seconds else "from the cache"
        engine.description = (
            f"docker {engine.versions()}; stand-in {container_engine.STAND_IN_TAG} {made}: {stand_in.tarball}"
        )
        yield engine


# The tests that take minutes each (a part of a baked project's suite, an image built and run, a
# project's tools installed and run): each xdist worker starts its share of them first, and spends
# the rest of the run on short ones, instead of the run ending on a few of them one after another.
LONGEST = (
    "test_project_checks_pass",
    "test_uv_sync_then_pre_commit_hooks_and_make_lint_pass",
    "test_make_install_refuses_a_stale_lock_and_make_upgrade_relocks",
    "test_image_builds_and_runs_as_the_manifest_asks",
    "test_the_demo_migrates_a_database_of_its_own_and_answers_the_readme_requests",
    "test_each_python_version_lints_and_type_checks",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the items so that the contiguous, equal shares pytest-xdist's worksteal scheduler
    first hands its workers each begin with their turn of the longest tests (in LONGEST's order,
    dealt round)."""
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    rank = {name: position for position, name in enumerate(LONGEST)}
    longest = sorted(
        (item for item in items if getattr(item, "originalname", None) in rank),
        key=lambda item: rank[getattr(item, "originalname", "")],
    )
    rest = [item for item in items if getattr(item, "originalname", None) not in rank]
    ordered: list[pytest.Item] = []
    for worker in range(workers):
        share = (len(items) - len(ordered)) // (workers - worker)  # as the scheduler splits them
        mine = longest[worker::workers]
        taken = max(0, share - len(mine))
        ordered += mine + rest[:taken]
        del rest[:taken]
    items[:] = ordered + rest


# The container tests record their figures (image sizes, build times) under this name; the
# summary prints them, since xdist workers' output is not shown.
FIGURES_PROPERTY = "container figures"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what the container tests measured: their reports carry it back from xdist workers."""
    lines = {
        line: None
        for reports in terminalreporter.stats.values()
        for report in reports
        for name, value in getattr(report, "user_properties", ())
        if name == FIGURES_PROPERTY
        for line in value
    }
    if lines:
        terminalreporter.section("container images")
        for line in lines:
            terminalreporter.line(line)


@dataclass(frozen=True)
class ProjectVenv:
    """A virtual environment, outside the project directory, for one baked project."""

    path: Path
    # Set in the project's tools' environment, over the caller's (e.g. another DATABASE_URL).
    overrides: Mapping[str, str] = field(default_factory=dict)
    # The interpreter the venv is made with (see python_for).
    python: str = sys.executable

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    @property
    def tmp(self) -> Path:
        """Temporary directory of the project's tools: nested pytest runs must not prune ours."""
        return self.path.parent / "tmp"

    def env(self) -> dict[str, str]:
        """The caller's environment (DATABASE_URL, REDIS_URL, ...) activated for this venv.

        Variables of the outer pytest (and xdist) run are dropped so they cannot leak into the
        baked project's own pytest run. So is PYTHONDONTWRITEBYTECODE, which some machines set
        (the template's development machine does): without the bytecode cache every process a
        baked suite starts (its servers, hundreds) compiles each module it imports again, 3.8 s
        of CPU to import the all-on app where 1.1 s does with it.
        """
        dropped = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE"}
        env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_") and key not in dropped}
        env["VIRTUAL_ENV"] = str(self.path)
        env["TMPDIR"] = str(self.tmp)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        # The outage tests must run here: a missing redis-server or initdb fails them.
        env[project_servers.REQUIRE_SERVERS] = "1"
        # tests/test_wheel.py builds and installs the wheel with the uv of the project's Makefile.
        env["UV"] = find_uv_bin()
        return env | dict(self.overrides)

    def create(self, project_dir: Path, *, install_project: bool = True) -> StepResult:
        """Create the venv with exactly what the project's uv.lock pins, as its `make install`
        does (`uv sync --locked`: no resolution, and a lock that does not match pyproject.toml is
        a failure): the project editable with its dev tools or, with install_project=False, only
        what it depends on, dev tools included.

        uv's cache is shared by all workers and runs (uv locks it), so only the first
        install downloads anything.
        """
        self.tmp.mkdir(parents=True, exist_ok=True)
        env = self.env() | {
            "UV_PROJECT_ENVIRONMENT": str(self.path),
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_NO_PROGRESS": "1",
        }
        options = [] if install_project else ["--no-install-project"]
        return run_step(
            f"uv sync --locked {' '.join(options)}".strip(),
            [find_uv_bin(), "sync", "--locked", "--python", self.python, *options],
            cwd=project_dir,
            env=env,
            timeout=600,
        )

    def run(self, name: str, argv: Sequence[str], cwd: Path, timeout: float = 600) -> StepResult:
        """Run one of the venv's console scripts (e.g. ``ruff``) in the project directory."""
        executable, *args = argv
        return run_step(name, [self.bin / executable, *args], cwd=cwd, env=self.env(), timeout=timeout)
