"""The pre-generation hook: bad answers fail fast with one clear line; good ones derive names."""

from __future__ import annotations

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
