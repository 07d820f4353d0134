"""Regenerate the lock data a baked project's uv.lock is assembled from (`make lock`).

A project's uv.lock must match its pyproject.toml, which differs by python_version (its
requires-python) and by the six use_* flags (its dependencies). Baking stays offline and needs
no uv, so this script locks every variant here and writes the parts of all those locks into
`{{cookiecutter.project_slug}}/uv.lock.variants`: each distinct part once, with the variants
whose lock has it. The post-generation hook joins its variant's parts into uv.lock.

    make lock             # .venv/bin/python scripts/lock.py: keep the locked versions, lock what is new
    make lock UPGRADE=1   # scripts/lock.py --upgrade: every dependency at its newest allowed version

The all-on variant of the lowest python_version is locked first; every other variant starts from
a copy of that lock (uv keeps its versions wherever they still fit), so all variants pin the same
versions where they can. Each variant is baked with a placeholder name, locked with `uv lock`
(the uv of the template's dev venv, whose version the data records) and, at the end, baked once
more with the new data: the hook's uv.lock must equal the one uv wrote, byte for byte.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cookiecutter.exceptions import FailedHookException  # type: ignore[import-untyped]
from cookiecutter.main import cookiecutter  # type: ignore[import-untyped]
from packaging.version import InvalidVersion, Version
from uv import find_uv_bin

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
DATA = TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "uv.lock.variants"
WORK_DIR = TEMPLATE_DIR / "build" / "lock"
# The flags in the order of a variant's bits, the post-generation hook's order.
FLAGS = ("use_postgres", "use_redis", "use_http_client", "use_opentelemetry", "use_rabbitmq", "use_auth")
PLACEHOLDER_NAME = "Lock Placeholder"
PLACEHOLDER = "lock-placeholder"  # the slug of PLACEHOLDER_NAME: the project's name in its lock
PACKAGE_SEPARATOR = "\n[[package]]\n"
HEADER_COMMENT = """\
# The uv.lock of every variant of the baked project, written by scripts/lock.py (`make lock` in
# the template): do not edit. A variant is a python_version and the use_* flags as bits, in the
# order postgres, redis, http_client, opentelemetry, rabbitmq, auth ("3.11-111000"). Each section is a part of
# uv.lock (its header, or one [[package]]) with the hexadecimal mask of the variants whose lock
# has it: bit i stands for the i-th variant listed. The post-generation hook joins its variant's
# parts, in uv's order, names the project after the project's slug, and deletes this file.
"""


@dataclass(frozen=True)
class Variant:
    python_version: str
    flags: tuple[bool, ...]

    @property
    def id(self) -> str:
        return f"{self.python_version}-" + "".join("1" if on else "0" for on in self.flags)

    @property
    def context(self) -> dict[str, object]:
        return {"project_name": PLACEHOLDER_NAME, "python_version": self.python_version} | dict(
            zip(FLAGS, self.flags, strict=True)
        )

    @property
    def all_on(self) -> bool:
        return all(self.flags)


def variants() -> list[Variant]:
    """Every python_version choice (lowest first, as cookiecutter.json lists them) with every
    combination of flags, all on first."""
    choices = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())["python_version"]
    combinations = [
        flags
        for flags in itertools.product([True, False], repeat=len(FLAGS))
        if bake_allowed(dict(zip(FLAGS, flags, strict=True)))
    ]
    return [Variant(version, flags) for version in choices for flags in combinations]


def bake_allowed(flags: dict[str, bool]) -> bool:
    """What hooks/pre_gen_project.py allows: auth's keys come through the HTTP client."""
    return not (flags["use_auth"] and not flags["use_http_client"])


def run(argv: list[str], cwd: Path) -> None:
    completed = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed in {cwd} (exit {completed.returncode}):\n{completed.stderr}")


class Baker:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # Cookiecutter's replay files stay out of the home directory.
        self.config = folder / "cookiecutter.yaml"
        self.config.write_text(
            f"replay_dir: {json.dumps(str(folder / 'replay'))}\n"
            f"cookiecutters_dir: {json.dumps(str(folder / 'cookiecutters'))}\n"
        )

    def bake(self, variant: Variant, *, hooks: bool, into: str) -> Path:
        """The project of `variant`; without hooks it keeps files a bake would delete, and has no
        uv.lock, but its pyproject.toml, all that a lock depends on, is the same."""
        output = self.folder / into / variant.id
        shutil.rmtree(output, ignore_errors=True)
        project = cookiecutter(
            str(TEMPLATE_DIR),
            no_input=True,
            output_dir=str(output),
            extra_context=variant.context,
            config_file=str(self.config),
            accept_hooks=hooks,
        )
        return Path(project)

    def current_lock(self, variant: Variant) -> str | None:
        """The uv.lock a bake of `variant` gets from the data as it is, if the data has it."""
        try:
            return (self.bake(variant, hooks=True, into="current") / "uv.lock").read_text()
        except FailedHookException:
            return None


def lock(uv: str, python: str, project: Path, start: str | None, *, upgrade: bool = False) -> str:
    """uv.lock of `project`, starting from the lock `start` (its versions are kept where they fit)."""
    lock_file = project / "uv.lock"
    lock_file.unlink(missing_ok=True)
    if start is not None:
        lock_file.write_text(start)
    run([uv, "lock", "--python", python, *(["--upgrade"] if upgrade else [])], cwd=project)
    return lock_file.read_text()


def lock_all(uv: str, python: str, baker: Baker, *, upgrade: bool) -> dict[Variant, str]:
    every = variants()
    base = every[0]
    assert base.all_on, "the lowest python_version's all-on variant comes first"
    started = None if upgrade else baker.current_lock(base)
    locks = {base: lock(uv, python, baker.bake(base, hooks=False, into="variants"), started, upgrade=upgrade)}
    for variant in every[1:]:
        # Each python_version's all-on lock starts from the base, the other flags from that.
        all_on = Variant(variant.python_version, (True,) * len(FLAGS))
        start = locks[base] if variant.all_on else locks[all_on]
        locks[variant] = lock(uv, python, baker.bake(variant, hooks=False, into="variants"), start)
        print(f"  {variant.id}: {locks[variant].count(PACKAGE_SEPARATOR)} packages", flush=True)
    return locks


def split(lock_text: str) -> tuple[str, list[str]]:
    header, *packages = lock_text.split(PACKAGE_SEPARATOR)
    for part in (header, *packages):
        # Sections are kept as whole lines, so that the data's markers can stand between them.
        assert part.endswith("\n") and not part.startswith("%%"), part[:200]
    return header, packages


def package_order(package: str) -> tuple[str, Version | str]:
    """uv's order: by name, then by version (a forked resolution locks two versions of one name)."""
    name = re.match(r'name = "([^"]+)"\n', package)
    assert name, package[:200]
    version = re.search(r'^version = "([^"]+)"$', package, re.MULTILINE)
    try:
        return name.group(1), Version(version.group(1)) if version else ""
    except InvalidVersion:
        return name.group(1), version.group(1) if version else ""


def data_text(locks: Mapping[Variant, str], uv_version: str) -> str:
    order = [variant for variant in variants() if variant in locks]
    headers: dict[str, int] = {}
    packages: dict[str, int] = {}
    for index, variant in enumerate(order):
        header, parts = split(locks[variant])
        headers[header] = headers.get(header, 0) | 1 << index
        for part in parts:
            packages[part] = packages.get(part, 0) | 1 << index
    width = (len(order) + 3) // 4
    lines = [HEADER_COMMENT, f"%% uv {uv_version}\n", f"%% placeholder {PLACEHOLDER}\n"]
    lines.append("%% variants " + " ".join(variant.id for variant in order) + "\n")
    for header, mask in headers.items():
        lines += [f"%% header {mask:0{width}x}\n", header]
    for package in sorted(packages, key=package_order):
        lines += [f"%% package {packages[package]:0{width}x}\n", package]
    return "".join(lines)


def check(baker: Baker, locks: Mapping[Variant, str]) -> None:
    """Every variant baked with the new data gets exactly the lock uv wrote for it."""
    for variant, expected in locks.items():
        baked = (baker.bake(variant, hooks=True, into="check") / "uv.lock").read_text()
        if baked != expected:
            sys.exit(f"the hook's uv.lock for {variant.id} differs from the one uv wrote: see {baker.folder}")


def newest_python() -> str:
    """`uv lock` needs an interpreter within requires-python: the newest choice is within all."""
    version = variants()[-1].python_version
    completed = subprocess.run(
        ["bash", str(TEMPLATE_DIR / "scripts" / "python.sh"), version], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        sys.exit(f"no Python {version} for `uv lock`:\n{completed.stderr}")
    return completed.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upgrade", action="store_true", help="lock every dependency at its newest allowed version")
    args = parser.parse_args()

    uv = find_uv_bin()
    uv_version = subprocess.run([uv, "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    python = newest_python()
    started = time.monotonic()
    # Kept after the run (build/ is ignored by git), to look into should the check fail.
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    WORK_DIR.mkdir(parents=True)
    baker = Baker(WORK_DIR)
    print(f"locking {len(variants())} variants with uv {uv_version} and {python}", flush=True)
    locks = lock_all(uv, python, baker, upgrade=args.upgrade)
    DATA.write_text(data_text(locks, uv_version))
    check(baker, locks)
    sections = DATA.read_text().count("\n%% ")
    print(f"wrote {DATA.relative_to(TEMPLATE_DIR)}: {DATA.stat().st_size / 1e3:.0f} kB, {sections} sections, ", end="")
    print(f"{sum(len(text) for text in locks.values()) / 1e6:.1f} MB of locks, in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
