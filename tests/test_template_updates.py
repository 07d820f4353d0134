"""Generated projects take later template changes with cruft, as the README describes.

Everything runs offline against a local git copy of this template's working tree (uncommitted
edits included): cruft clones the template with git, and a path works as well as a URL.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from conftest import TEMPLATE_DIR, run_step

# Not part of the template: the venv, build output and caches of whoever runs the tests.
TOP_LEVEL_EXCLUDES = {".git", ".venv", "build"}
CACHE_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}

ANSWERS = {"project_name": "Billing API", "use_redis": False}
ANSWERS_ON_COMMAND_LINE = ["project_name=Billing API", "use_redis=false"]
PROJECT_SLUG = "billing-api"
REDIS_MODULE = Path("src/billing_api/resources/redis.py")

GENERATED_README = Path("{{cookiecutter.project_slug}}") / "README.md"
README_ADDITION = "Template change: this line arrived with `cruft update`."
NEW_TEMPLATE_FILE = Path("{{cookiecutter.project_slug}}") / "CHANGELOG.md"

USER_ENV_LINE = "# Our team runs LOG_LEVEL=DEBUG locally."
USER_README_LINE = "Owned by the billing team."


@pytest.fixture
def tool_env(tmp_path: Path) -> dict[str, str]:
    """Environment for git, cookiecutter and cruft: a throwaway HOME and a fixed git identity.

    No GIT_* variable of the caller leaks in, and no user or system git config is read.
    """
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    identity = {"NAME": "Template Tests", "EMAIL": "template-tests@example.invalid"}
    for role in ("AUTHOR", "COMMITTER"):
        for field, value in identity.items():
            env[f"GIT_{role}_{field}"] = value
    return env | {"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}


def run(env: Mapping[str, str], cwd: Path, *argv: str | Path) -> str:
    """Run a command that must succeed; return its output (stdout and stderr)."""
    step = run_step(" ".join(str(arg) for arg in argv), argv, cwd=cwd, env=env, timeout=60)
    assert step.ok, step.report()
    return step.output


def cruft(env: Mapping[str, str], cwd: Path, *args: str | Path, expect_ok: bool = True) -> str:
    step = run_step(f"cruft {' '.join(map(str, args))}", [sys.executable, "-m", "cruft", *args], cwd, env, timeout=60)
    assert step.ok == expect_ok, step.report()
    return step.output


def commit_all(env: Mapping[str, str], repo: Path, message: str) -> str:
    """Commit every change in ``repo`` (``git init`` first if needed); return the commit id."""
    if not (repo / ".git").exists():
        run(env, repo, "git", "init", "--quiet", "--initial-branch=main")
    run(env, repo, "git", "add", "--all")
    run(env, repo, "git", "commit", "--quiet", "--message", message)
    return run(env, repo, "git", "rev-parse", "HEAD").strip()


def ignore_non_template(directory: str, names: list[str]) -> set[str]:
    excluded = CACHE_DIRS | (TOP_LEVEL_EXCLUDES if Path(directory) == TEMPLATE_DIR else set())
    return excluded.intersection(names)


@pytest.fixture
def template_repo(tmp_path: Path, tool_env: dict[str, str]) -> Path:
    """A git repository holding a copy of the template as it is on disk now."""
    template = tmp_path / "template"
    shutil.copytree(TEMPLATE_DIR, template, ignore=ignore_non_template)
    commit_all(tool_env, template, "template v1")
    return template


def change_template(env: Mapping[str, str], template: Path) -> str:
    """Commit a later template version: one line more in the README, one new file."""
    readme = template / GENERATED_README
    readme.write_text(f"{readme.read_text().rstrip()}\n\n{README_ADDITION}\n")
    (template / NEW_TEMPLATE_FILE).write_text("# Changes to {{ cookiecutter.project_name }}\n")
    return commit_all(env, template, "template v2")


def append_line(path: Path, line: str) -> None:
    path.write_text(f"{path.read_text().rstrip()}\n{line}\n")


def insert_after_first_line(path: Path, line: str) -> None:
    first, rest = path.read_text().split("\n", 1)
    path.write_text(f"{first}\n\n{line}\n{rest}")


def assert_in_sync(env: Mapping[str, str], project: Path, commit: str) -> None:
    """``cruft check`` passes and the project renders exactly as the template at ``commit``."""
    assert json.loads((project / ".cruft.json").read_text())["commit"] == commit
    cruft(env, project, "check")
    # Reproducible rendering: with the recorded answers the template yields these very files.
    cruft(env, project, "diff", "--exit-code")


def test_cruft_update_brings_template_changes_and_keeps_local_edits(
    tmp_path: Path, tool_env: dict[str, str], template_repo: Path
) -> None:
    first_commit = run(tool_env, template_repo, "git", "rev-parse", "HEAD").strip()
    cruft(
        tool_env,
        tmp_path,
        "create",
        template_repo,
        "--no-input",
        "--output-dir",
        tmp_path / "projects",
        "--extra-context",
        json.dumps(ANSWERS),
    )
    project = tmp_path / "projects" / PROJECT_SLUG
    assert_in_sync(tool_env, project, first_commit)
    assert not (project / REDIS_MODULE).exists(), "use_redis=false must not ship the Redis module"
    commit_all(tool_env, project, "baked")

    append_line(project / ".env.example", USER_ENV_LINE)
    insert_after_first_line(project / "README.md", USER_README_LINE)
    commit_all(tool_env, project, "our own edits")
    new_commit = change_template(tool_env, template_repo)

    check = cruft(tool_env, project, "check", expect_ok=False)
    assert "out of date" in check
    # `cruft diff` compares with the template at the linked commit: only the team's own edits.
    own_edits = cruft(tool_env, project, "diff")
    assert f"-{USER_ENV_LINE}" in own_edits
    assert README_ADDITION not in own_edits
    # Against the newest template the coming change shows (as + lines: the template's side).
    coming = cruft(tool_env, project, "diff", "--checkout", "main")
    assert f"+{README_ADDITION}" in coming

    cruft(tool_env, project, "update", "--skip-apply-ask")

    readme = (project / "README.md").read_text()
    assert README_ADDITION in readme
    assert USER_README_LINE in readme, "the team's edit to the same file was lost"
    assert USER_ENV_LINE in (project / ".env.example").read_text(), "the team's edit was lost"
    assert (project / "CHANGELOG.md").read_text() == "# Changes to Billing API\n"
    assert not (project / REDIS_MODULE).exists(), "the update must keep the project's answers"
    cruft_state = json.loads((project / ".cruft.json").read_text())
    assert cruft_state["commit"] == new_commit
    assert cruft_state["context"]["cookiecutter"]["use_redis"] is False
    cruft(tool_env, project, "check")


def test_cruft_link_adopts_a_project_baked_with_plain_cookiecutter(
    tmp_path: Path, tool_env: dict[str, str], template_repo: Path
) -> None:
    output_dir = tmp_path / "projects"
    cookiecutter = [sys.executable, "-m", "cookiecutter", template_repo, "--no-input", "-o", output_dir]
    run(tool_env, tmp_path, *cookiecutter, *ANSWERS_ON_COMMAND_LINE)
    project = output_dir / PROJECT_SLUG
    assert not (project / ".cruft.json").exists()
    commit_all(tool_env, project, "baked with cookiecutter")

    # The same answers as at baking time, so the linked state reproduces the project.
    cruft(tool_env, project, "link", template_repo, "--no-input", "--extra-context", json.dumps(ANSWERS))
    template_commit = run(tool_env, template_repo, "git", "rev-parse", "HEAD").strip()
    assert_in_sync(tool_env, project, template_commit)
    commit_all(tool_env, project, "link to the template with cruft")

    new_commit = change_template(tool_env, template_repo)
    cruft(tool_env, project, "update", "--skip-apply-ask")

    assert README_ADDITION in (project / "README.md").read_text()
    assert json.loads((project / ".cruft.json").read_text())["commit"] == new_commit
