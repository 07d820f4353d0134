"""wrk, the load generator: install it (and other tools) where missing, run it, read its report."""

import argparse
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

# Prints the run as one JSON line, with p99.9, which wrk's own report leaves out.
REPORT_SCRIPT = Path(__file__).resolve().parent / "wrk_report.lua"
_JSON_LINE = re.compile(r"^WRK_JSON (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int  # socket errors (connect, read, write, timeout) plus non-2xx/3xx responses
    seconds: float  # the window: requests completed in it over its length is rps


def add_ab_arguments(parser: argparse.ArgumentParser, *, rounds: int) -> None:
    """The options of a side-by-side run (bench/ab.py, bench/pooler.py): its wrk rounds and the
    servers the baked service uses."""
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


def ensure_installed(command: str, package: str) -> str:
    """The path of `command`, installing its Debian package first when it is missing and we
    are root."""
    found = shutil.which(command)
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit(f"{command} is not installed: run `sudo apt-get install -y {package}`")
    if shutil.which("apt-get") is None:
        raise SystemExit(f"{command} is not installed and there is no apt-get here: install it")
    print(f"installing {package} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    found = shutil.which(command)
    if found is None:
        raise SystemExit(f"apt-get installed {package}, but {command} is not on PATH")
    return found


def wrk_version(wrk: str) -> str:
    # `wrk -v` prints its version line and then the usage, and exits 1.
    output = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    first = (output.stdout or output.stderr).splitlines()[0]
    return first.split(" Copyright")[0].strip()


def parse(report: str) -> WrkResult:
    found = _JSON_LINE.search(report)
    if found is None:
        raise ValueError(f"unexpected wrk output:\n{report}")
    data = json.loads(found.group(1))
    seconds = data["duration_us"] / 1e6
    return WrkResult(
        rps=data["requests"] / seconds,
        requests=data["requests"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        p999_ms=data["p999_us"] / 1000,
        errors=data["socket_errors"] + data["non_2xx"],
        seconds=seconds,
    )


def _wrk_command(wrk: str, url: str, *, connections: int, threads: int, seconds: int) -> list[str]:
    return [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "--script",
        str(REPORT_SCRIPT),
        url,
    ]


def run_wrk(wrk: str, url: str, *, connections: int, threads: int, seconds: int) -> WrkResult:
    command = _wrk_command(wrk, url, connections=connections, threads=threads, seconds=seconds)
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 30
    )
    return parse(output.stdout)


def run_wrk_under_flood(
    wrk: str, url: str, flood_url: str, *, connections: int, seconds: int, flood_connections: int
) -> WrkResult:
    """Load `url` while a second wrk keeps `flood_connections` calls to `flood_url` in flight
    for the whole run: the result is `url`'s, with the flood's errors added to its own."""
    flood_command = _wrk_command(
        wrk, flood_url, connections=flood_connections, threads=1, seconds=seconds + 1
    )
    with subprocess.Popen(flood_command, stdout=subprocess.PIPE, text=True) as flood:
        result = run_wrk(wrk, url, connections=connections, threads=1, seconds=seconds)
        flood_report, _ = flood.communicate(timeout=seconds + 30)
    if flood.returncode != 0:
        raise RuntimeError(f"the flood's wrk failed ({flood.returncode})")
    return replace(result, errors=result.errors + parse(flood_report).errors)
