"""The hooks: bad answers fail fast with one clear line; good ones derive names; a bake prints the
next steps, which are the generated README's quick start."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from conftest import Baker

# (field the error must name, answers). Slug cases also pass a valid package_name, so that
# exactly one answer is wrong and the hook has exactly one thing to complain about.
BAD_ANSWERS: list[tuple[str, dict[str, str]]] = [
    ("project_name", {"project_name": 'Say "hi"', "project_slug": "say-hi", "package_name": "say_hi"}),
    ("project_name", {"project_name": "back\\slash", "project_slug": "back", "package_name": "back"}),
    ("project_slug", {"project_slug": "My Service", "package_name": "my_service"}),
    ("project_slug", {"project_slug": "9lives", "package_name": "nine_lives"}),
    ("project_slug", {"project_slug": "bad_slug", "package_name": "bad_slug"}),
    ("project_slug", {"project_slug": "-leading-hyphen", "package_name": "leading_hyphen"}),
    ("package_name", {"package_name": "redis"}),
    ("package_name", {"package_name": "fastapi"}),
    ("package_name", {"package_name": "opentelemetry"}),
    ("package_name", {"package_name": "test"}),
    ("package_name", {"package_name": "class"}),
    ("package_name", {"package_name": "1abc"}),
    ("package_name", {"package_name": "my-pkg"}),
    ("package_name", {"package_name": "jwt"}),
    ("use_auth", {"use_auth": "yes", "use_http_client": "no"}),
]


@pytest.mark.parametrize(
    ("field", "answers"),
    BAD_ANSWERS,
    ids=[f"{field}={answers[field]}" for field, answers in BAD_ANSWERS],
)
def test_bad_answer_is_rejected_cleanly(baker: Baker, tmp_path: Path, field: str, answers: dict[str, str]) -> None:
    output_dir = tmp_path / "out"
    output_dir.mkdir()

    result = baker.run_cli(output_dir, answers)

    assert result.returncode != 0, f"{answers} was accepted:\n{result.stdout}{result.stderr}"
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1, f"expected one error line on stderr, got:\n{result.stderr}"
    assert field in error_lines[0], f"the error does not name {field!r}: {error_lines[0]!r}"
    assert list(output_dir.iterdir()) == [], "a rejected bake left files in the output folder"


def test_project_name_derives_slug_and_package(baker: Baker, tmp_path: Path) -> None:
    result = baker.run_cli(tmp_path, {"project_name": "Billing API v2"})

    assert result.returncode == 0, result.stdout + result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["billing-api-v2"]
    assert (tmp_path / "billing-api-v2" / "src" / "billing_api_v2" / "__init__.py").is_file()


def test_defaults_bake_my_service(baker: Baker, tmp_path: Path) -> None:
    project = baker.bake(tmp_path, {})

    assert project == tmp_path / "my-service"
    assert (project / "src" / "my_service" / "__init__.py").is_file()


@pytest.mark.parametrize(("answer", "on"), [("y", True), ("yes", True), ("true", True), ("n", False), ("no", False)])
def test_opentelemetry_answer_on_the_command_line_keeps_or_deletes_tracing(
    baker: Baker, tmp_path: Path, answer: str, on: bool
) -> None:
    result = baker.run_cli(tmp_path, {"use_opentelemetry": answer})

    assert result.returncode == 0, result.stdout + result.stderr
    project = tmp_path / "my-service"
    tracing_files = [project / "src" / "my_service" / "resources" / "tracing.py", project / "tests" / "test_tracing.py"]
    assert [path.exists() for path in tracing_files] == [on, on]
    assert ("opentelemetry-sdk" in (project / "pyproject.toml").read_text()) == on


def quick_start(project: Path) -> list[str]:
    """The commands of the generated README's quick start: its first block under "## Run it",
    without the comments."""
    run_it = (project / "README.md").read_text().split("\n## Run it\n", 1)[1]
    block = run_it.split("```bash\n", 1)[1].split("\n```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines()]


def test_the_bake_prints_the_next_steps_and_nothing_else(baker: Baker, tmp_path: Path) -> None:
    result = baker.run_cli(tmp_path, {}, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    steps = result.stdout.splitlines()
    assert steps == ["cd my-service", "make install", "cp .env.example .env", "make migrate", "make run"]
    assert steps[1:] == quick_start(tmp_path / "my-service")


def test_the_next_steps_cd_by_an_absolute_path_outside_the_working_directory(
    baker: Baker, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()

    result = baker.run_cli(tmp_path / "out", {}, cwd=tmp_path / "elsewhere")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"cd {(tmp_path / 'out' / 'my-service').resolve()}"


FLAGS = ["use_postgres", "use_redis", "use_http_client", "use_opentelemetry", "use_rabbitmq", "use_auth"]
COMBINATIONS = [
    flags
    for flags in (dict(zip(FLAGS, values, strict=True)) for values in itertools.product([True, False], repeat=len(FLAGS)))
    if not (flags["use_auth"] and not flags["use_http_client"])
]


@pytest.mark.parametrize(
    "flags",
    COMBINATIONS,
    ids=["-".join(flag.removeprefix("use_") for flag, on in flags.items() if on) or "none" for flags in COMBINATIONS],
)
def test_the_next_steps_are_the_quick_start_and_work_in_every_combination(
    baker: Baker,
    tmp_path: Path,
    flags: dict[str, bool],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Baked in this process, the hooks' output read from the file descriptors: the tests above
    # bake with the command line and check its output whole; this one what differs by flag.
    monkeypatch.setenv("PWD", str(tmp_path))  # the shell's working directory, for the hook's `cd`

    project = baker.bake(tmp_path / "out", flags)

    stdout, stderr = capfd.readouterr()
    assert stderr == ""
    assert project == tmp_path / "out" / "my-service"
    cd, *steps = stdout.splitlines()
    assert cd == "cd out/my-service"
    assert steps == quick_start(project)
    assert ("make migrate" in steps) == flags["use_postgres"]
    for step in steps:
        command, *arguments = step.split()
        if command == "make":  # a target of the project's Makefile (-n: printed, not run)
            dry_run = subprocess.run(
                ["make", "-n", *arguments], cwd=project, capture_output=True, text=True, check=False
            )
            assert dry_run.returncode == 0, f"{step}: {dry_run.stderr}"
        elif command == "cp":
            assert (project / arguments[0]).is_file(), step
        else:
            pytest.fail(f"a step the test does not know: {step}")
