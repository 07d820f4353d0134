"""Setting up what the benchmark measures: baking the template, installing a bake, the database
and the Redis keys it uses, and timing the bakes themselves."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from itertools import product
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cookiecutter.main import cookiecutter  # type: ignore[import-untyped]
from uv import find_uv_bin

REPO = Path(__file__).resolve().parent.parent
APPS = REPO / "bench" / "apps"
BUILD = REPO / "build" / "bench"
PACKAGE = "my_service"  # the package name of the default answers
FLAGS = ("use_postgres", "use_redis", "use_http_client", "use_opentelemetry")
DB_NAME = "bench_my_service"


def run(
    argv: Sequence[str | Path], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Run a command to completion; its stdout. A failure shows the command's output."""
    done = subprocess.run(
        [str(arg) for arg in argv],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {argv}\n{done.stdout}{done.stderr}")
    return done.stdout


def cookiecutter_config(home: Path) -> Path:
    """A config that keeps cookiecutter's replay files out of the home directory."""
    config = home / "cookiecutter.yaml"
    config.write_text(
        f"replay_dir: {json.dumps(str(home / 'replay'))}\n"
        f"cookiecutters_dir: {json.dumps(str(home / 'cookiecutters'))}\n"
    )
    return config


def bake(output_dir: Path, config: Path, context: Mapping[str, object]) -> Path:
    project = cookiecutter(
        str(REPO),
        no_input=True,
        output_dir=str(output_dir),
        extra_context=dict(context),
        config_file=str(config),
    )
    return Path(project)


def install(project: Path, venv: Path) -> Path:
    """A fresh venv with the baked service installed as the Dockerfile installs it: the versions
    its uv.lock pins, without the dev tools, not editable, bytecode compiled; its python."""
    shutil.rmtree(venv, ignore_errors=True)
    sync = ["sync", "--locked", "--quiet", "--no-dev", "--no-editable", "--compile-bytecode"]
    run(
        [find_uv_bin(), *sync, "--python", sys.executable],
        cwd=project,
        env={"UV_PROJECT_ENVIRONMENT": str(venv)},
    )
    return venv / "bin" / "python"


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def admin(python: Path, *args: str) -> str:
    """bench/apps/admin.py in the bake's venv: the database, the Redis keys, the versions."""
    return run([python, APPS / "admin.py", *args])


def time_bakes(config: Path) -> dict[str, float]:
    """Seconds to bake each combination of the flags (cookiecutter only, in-process)."""
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-bake-") as tmp:
        for number, values in enumerate(product([True, False], repeat=len(FLAGS))):
            context = dict(zip(FLAGS, values, strict=True))
            started = time.perf_counter()
            bake(Path(tmp) / str(number), config, context)
            label = "+".join(flag.removeprefix("use_") for flag, on in context.items() if on)
            times[label or "none"] = time.perf_counter() - started
    return times
