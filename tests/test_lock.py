"""The baked project's uv.lock: assembled offline by the post-generation hook from the lock data
that scripts/lock.py writes, it must match the project's pyproject.toml for every combination of
flags and every python_version, and the project's own commands must install from it and re-lock.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from pathlib import Path

import pytest
from uv import find_uv_bin

from conftest import PYTHON_VERSIONS, TEMPLATE_DIR, Baker, ProjectVenv, StepResult, python_for, run_step
from test_bake import RENAMED_ALL_ON, RESOURCES, allowed

LOCK_DATA = TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "uv.lock.variants"
FLAGS = [resource.flag for resource in RESOURCES.values()]
VARIANTS = [
    (version, dict(zip(FLAGS, flags, strict=True)))
    for version in PYTHON_VERSIONS
    for flags in itertools.product([True, False], repeat=len(FLAGS))
    if allowed("".join("1" if on else "0" for on in flags))
]
# What uv says when uv.lock no longer matches pyproject.toml and --locked forbids re-locking.
STALE_LOCK = "The lockfile at `uv.lock` needs to be updated, but `--locked` was provided."


def variant_id(version: str, flags: dict[str, bool]) -> str:
    return f"{version}-" + "".join("1" if flags[flag] else "0" for flag in FLAGS)


def require(result: StepResult) -> StepResult:
    if not result.ok:
        pytest.fail(result.report(), pytrace=False)
    return result


def uv_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return ProjectVenv(tmp_path / "venv").env() | {
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
        "TMPDIR": str(tmp_path / "tmp"),
    }


def locked_packages(lock: str) -> list[tuple[str, str]]:
    """(name, version) of each [[package]], in the file's order."""
    return re.findall(r'^\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', lock, re.MULTILINE)


def test_lock_data_has_every_variant_written_by_the_tests_uv() -> None:
    data = LOCK_DATA.read_text()
    settings = dict(line[3:].split(" ", 1) for line in data.splitlines() if line.startswith("%% ") and " " in line[3:])
    pinned_uv = re.search(r"^uv==(\S+)$", (TEMPLATE_DIR / "requirements-dev.txt").read_text(), re.MULTILINE)

    assert sorted(settings["variants"].split()) == sorted(variant_id(*variant) for variant in VARIANTS)
    assert pinned_uv, "requirements-dev.txt pins uv"
    # The uv the tests run (and the projects' Dockerfile and CI install) wrote the data.
    assert settings["uv"] == pinned_uv.group(1), "run `make lock` after changing the uv pin"


def test_project_pins_the_uv_that_wrote_its_lock(baker: Baker, tmp_path: Path) -> None:
    project = baker.bake(tmp_path, {})
    uv_version = re.search(r"^%% uv (\S+)$", LOCK_DATA.read_text(), re.MULTILINE)
    assert uv_version
    assert f"uv=={uv_version.group(1)}" in (project / "Dockerfile").read_text()
    assert f'version: "{uv_version.group(1)}"' in (project / ".github/workflows/ci.yml").read_text()
    # The README and its docs/ pages name the uv version, each time this one.
    documentation = [project / "README.md", *sorted((project / "docs").glob("*.md"))]
    named = {version for page in documentation for version in re.findall(r"\buv (\d+\.\d+\.\d+)", page.read_text())}
    assert named == {uv_version.group(1)}


@pytest.mark.parametrize(
    ("python_version", "flags"), VARIANTS, ids=[variant_id(*variant) for variant in VARIANTS]
)
def test_baked_lock_matches_pyproject(
    python_version: str, flags: dict[str, bool], baker: Baker, tmp_path: Path
) -> None:
    project = baker.bake(tmp_path / "out", {"python_version": python_version, **flags})
    lock = (project / "uv.lock").read_text()
    # `uv lock` needs an interpreter within requires-python; the newest choice is within every one.
    python, _ = python_for(PYTHON_VERSIONS[-1])

    checked = run_step(
        "uv lock --locked --offline",
        [find_uv_bin(), "lock", "--locked", "--offline", "--python", python],
        cwd=project,
        env=uv_env(tmp_path),
        timeout=120,
    )

    require(checked)
    assert not (project / LOCK_DATA.name).exists(), "the hook deletes the lock data"
    assert f'requires-python = ">={python_version}"' in lock.splitlines()[:3]
    names = [name for name, _ in locked_packages(lock)]
    assert names == sorted(names), "packages in uv's order: a later `uv lock` rewrites only what changes"
    assert (project / "uv.lock").read_text() == lock, "`uv lock --locked` changed nothing"


def test_renamed_project_is_named_in_its_lock(baker: Baker, tmp_path: Path) -> None:
    project = baker.bake(tmp_path / "out", RENAMED_ALL_ON.context)
    lock = (project / "uv.lock").read_text()
    python, _ = python_for(PYTHON_VERSIONS[-1])

    require(
        run_step(
            "uv lock --locked --offline",
            [find_uv_bin(), "lock", "--locked", "--offline", "--python", python],
            cwd=project,
            env=uv_env(tmp_path),
            timeout=120,
        )
    )
    assert (RENAMED_ALL_ON.slug, "0.1.0") in locked_packages(lock)
    assert "placeholder" not in lock


def newest_upload(lock: str) -> str:
    """The latest upload time of any locked file: `uv lock --upgrade` with this cutoff sees the
    package index as it was when the lock was written, so the test does not move with it."""
    return max(re.findall(r'upload-time = "([^"]+)"', lock))


@pytest.mark.slow
def test_make_install_refuses_a_stale_lock_and_make_upgrade_relocks(baker: Baker, tmp_path: Path) -> None:
    project = baker.bake(tmp_path / "out", dict.fromkeys(FLAGS, False))
    uv = find_uv_bin()
    venv = ProjectVenv(tmp_path / "venv")
    make = ["make", f"UV={uv}", f"VENV={venv.path}", f"PYTHON={venv.python}"]
    env = uv_env(tmp_path)
    lock_before = (project / "uv.lock").read_text()
    fastapi = dict(locked_packages(lock_before))["fastapi"]

    require(run_step("make install", [*make, "install"], cwd=project, env=env, timeout=600))
    missing_uv = run_step("make install", ["make", "UV=/nonexistent/uv", "install"], cwd=project, env=env, timeout=60)
    # A floor raised to the locked version: the versions still fit, but the lock no longer
    # records what pyproject.toml asks.
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"fastapi>=0.142"', f'"fastapi>={fastapi}"'))
    stale = run_step("make install", [*make, "install"], cwd=project, env=env, timeout=600)
    # The upgrade's own test run is one file's: that its `make test` runs is what is checked here.
    # The whole suite of this combination runs in test_bake.py (test_project_checks_pass).
    upgraded = run_step(
        "make upgrade",
        [*make, "upgrade"],
        cwd=project,
        env=env | {"UV_EXCLUDE_NEWER": newest_upload(lock_before), "PYTEST_ADDOPTS": "tests/test_app.py"},
        timeout=900,
    )

    assert missing_uv.returncode != 0
    assert "/nonexistent/uv not found: install uv" in missing_uv.output
    assert stale.returncode != 0
    # uv wraps its message to the terminal's width (COLUMNS): compared with the spaces joined.
    assert STALE_LOCK in " ".join(stale.output.split()), stale.report()
    require(upgraded)
    for step in ("lock --upgrade", "sync --locked", "ruff check", "mypy", "pytest"):
        assert step in upgraded.output, step
    assert re.search(r"^tests/test_app\.py \.+", upgraded.output, re.MULTILINE), upgraded.report()
    lock_after = (project / "uv.lock").read_text()
    assert lock_after != lock_before
    metadata = tomllib.loads(lock_after)["package"]
    (own,) = [package for package in metadata if package["name"] == "my-service"]
    assert {"name": "fastapi", "specifier": f">={fastapi}"} in own["metadata"]["requires-dist"]
