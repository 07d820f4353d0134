"""The service's life outside the load: start to ready, SIGTERM to exit, the import floor under
both, and the template's own suite."""

import os
import signal
import statistics
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bakes import PACKAGE, REPO
from processes import Processes, free_port, peak_rss_mb, wait_for_status

# How long the service sits idle, with no request in flight, before its memory is read.
IDLE_SECONDS = 0.3


@dataclass(frozen=True)
class Startup:
    ready_s: list[float]
    exit_s: list[float]
    idle_peak_rss_mb: list[float]
    exit_codes: list[int]

    @property
    def ready_median(self) -> float:
        return statistics.median(self.ready_s)

    @property
    def exit_median(self) -> float:
        return statistics.median(self.exit_s)


def measure_startup(
    group: Processes, python: Path, project: Path, env: Mapping[str, str], runs: int
) -> Startup:
    """`python -m <package>`: process start to /health/ready 200, then SIGTERM to exit, idle.
    One more first start is discarded (cold file cache)."""
    result = Startup([], [], [], [])
    for number in range(runs + 1):
        port = free_port()
        started = time.perf_counter()
        process = group.start(
            f"startup-{number}",
            [python, "-m", PACKAGE],
            env={**env, "PORT": str(port)},
            cwd=project,
        )
        ready_at = wait_for_status(f"http://127.0.0.1:{port}/health/ready", process, timeout=30)
        time.sleep(IDLE_SECONDS)  # not a synchronisation: the idle time being measured
        rss = peak_rss_mb(process.pid)
        stopping = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        exited = time.perf_counter()
        if number > 0:
            result.ready_s.append(ready_at - started)
            result.exit_s.append(exited - stopping)
            result.idle_peak_rss_mb.append(rss)
            result.exit_codes.append(code)
    return result


@dataclass(frozen=True)
class ImportFloor:
    """A process that only imports the app (opens nothing, serves nothing): medians of the time
    from its start until the import is done, and of its peak RSS. Start → ready and the
    worker's memory cannot go below these."""

    seconds: float
    peak_rss_mb: float


def measure_import_floor(
    python: Path, project: Path, env: Mapping[str, str], runs: int
) -> ImportFloor:
    code = (
        f"import resource, {PACKAGE}.main; "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)"
    )
    seconds, rss_mb = [], []
    for number in range(runs + 1):  # the first, with a cold file cache, is discarded
        started = time.perf_counter()
        with subprocess.Popen(
            [python, "-c", code],
            stdout=subprocess.PIPE,
            env={**os.environ, **env},
            cwd=project,
            text=True,
        ) as process:
            assert process.stdout is not None
            line = process.stdout.readline()
            imported = time.perf_counter()
        if process.returncode != 0 or not line.strip():
            raise SystemExit(f"importing {PACKAGE}.main failed ({process.returncode})")
        if number > 0:
            seconds.append(imported - started)
            rss_mb.append(int(line) / 1024)  # ru_maxrss is in KiB on Linux
    return ImportFloor(statistics.median(seconds), statistics.median(rss_mb))


def time_template_suite() -> tuple[float, int]:
    """Seconds and exit status of the template's `make test`."""
    started = time.perf_counter()
    code = subprocess.run(["make", "test"], cwd=REPO, check=False).returncode
    return time.perf_counter() - started, code
