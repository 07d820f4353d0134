"""wrk, the load generator: install it (and other tools) where missing, run it, read its report."""

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_LATENCY = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors (connect, read, write, timeout) plus non-2xx/3xx responses


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


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse(report: str) -> WrkResult:
    latency = {int(pct): _ms(value, unit) for pct, value, unit in _LATENCY.findall(report)}
    rps = _RPS.search(report)
    total = _TOTAL.search(report)
    if rps is None or total is None or 99 not in latency:
        raise ValueError(f"unexpected wrk output:\n{report}")
    socket_errors = _SOCKET_ERRORS.search(report)
    non_2xx = _NON_2XX.search(report)
    errors = sum(map(int, socket_errors.groups())) if socket_errors else 0
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return WrkResult(
        rps=float(rps.group(1)),
        requests=int(total.group(1)),
        p50_ms=latency[50],
        p99_ms=latency[99],
        errors=errors,
    )


def _wrk_command(wrk: str, url: str, *, connections: int, threads: int, seconds: int) -> list[str]:
    return [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "--latency",
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
