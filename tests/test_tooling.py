"""The generated project's day-one tooling: pre-commit, the Makefile and uv.

Each test bakes a project, installs it and runs the tools the way the project's README says.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from uv import find_uv_bin

from conftest import Baker, ProjectVenv, StepResult, run_step

ALL_ON = {
    "use_postgres": True,
    "use_redis": True,
    "use_http_client": True,
    "use_opentelemetry": True,
    "use_rabbitmq": True,
    "use_auth": True,
}
ALL_OFF = {
    "use_postgres": False,
    "use_redis": False,
    "use_http_client": False,
    "use_opentelemetry": False,
    "use_rabbitmq": False,
    "use_auth": False,
}
# An identity and a branch name for git without reading or writing any global configuration.
GIT = ["git", "-c", "user.name=Template Test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"]
# The commands of the Makefile's `lint` target, and the names of the matching pre-commit hooks.
LINT_COMMANDS = ("ruff check .", "ruff format --check .", "mypy")
HOOK_NAMES = ("ruff check", "ruff format --check", "mypy")


def require(result: StepResult) -> StepResult:
    if not result.ok:
        pytest.fail(result.report(), pytrace=False)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("context", [ALL_ON, ALL_OFF], ids=["all-on", "all-off"])
def test_uv_sync_then_pre_commit_hooks_and_make_lint_pass(context: dict[str, bool], baker: Baker, tmp_path: Path) -> None:
    project = baker.bake(tmp_path / "out", context)
    # Where `uv sync` puts the venv, and where the Makefile looks for it by default.
    venv = ProjectVenv(project / ".venv")
    (tmp_path / "tmp").mkdir()
    # The hooks find the tools on the venv's PATH; pre-commit keeps its state out of $HOME.
    env = venv.env() | {
        "TMPDIR": str(tmp_path / "tmp"),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
    }
    lock = (project / "uv.lock").read_text()

    sync = [find_uv_bin(), "sync", "--locked", "--python", sys.executable]
    require(run_step("uv sync --locked", sync, cwd=project, env=env, timeout=600))
    require(run_step("git init", [*GIT, "init", "-q"], cwd=project, env=env, timeout=60))
    require(run_step("git add -A", [*GIT, "add", "-A"], cwd=project, env=env, timeout=60))
    hooks = require(
        run_step("pre-commit", [venv.bin / "pre-commit", "run", "--all-files"], cwd=project, env=env, timeout=300)
    )
    lint = require(run_step("make lint", ["make", "lint"], cwd=project, env=env, timeout=300))
    collected = require(
        run_step("pytest --collect-only", [venv.bin / "pytest", "--collect-only", "-q"], cwd=project, env=env, timeout=120)
    )

    assert (project / "uv.lock").read_text() == lock, "installed from the baked lock, unchanged"
    # Every hook ran on files ("Skipped" would mean it matched none) and passed.
    lines = hooks.output.splitlines()
    for name in HOOK_NAMES:
        assert any(line.startswith(f"{name}.") and line.endswith("Passed") for line in lines), hooks.output
    # The dev dependency group brought the dev extra: its tools ran from .venv.
    for command in LINT_COMMANDS:
        assert f".venv/bin/{command}" in lint.output, lint.output
    assert " tests collected" in collected.output, collected.output
