"""Instructions per request, counted by callgrind: a measure that does not move with the load of
a shared machine, unlike requests per second.

apps/drive.py sends an app its requests in-process, so the count is the app's own work: no
server, no load generator, and no kernel time (a log line's write, a socket round trip to
PostgreSQL or Redis count only their user-space side). Each count is the difference between two
runs of drive.py, one with REQUESTS more requests than the other, over REQUESTS: the imports,
the lifespan and the warm-up cancel out (two such runs of the same count differ by well under
a thousand instructions).
"""

import os
import re
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

_COLLECTED = re.compile(r"Collected : (\d+)")


@dataclass(frozen=True)
class Target:
    key: str
    description: str
    module: str  # an app of bench/apps
    path: str
    env: Mapping[str, str]


TARGETS = [
    Target("bare.live", "bare FastAPI app, GET /health/live", "bare", "/health/live", {}),
    Target(
        "bare.routed",
        "bare FastAPI app, the same route in an included APIRouter",
        "bare",
        "/routed/health/live",
        {},
    ),
    Target("service.live", "service, GET /health/live", "service", "/health/live", {}),
    Target(
        "quiet.live",
        "service without its request log line, GET /health/live",
        "service",
        "/health/live",
        {"LOG_LEVEL": "WARNING"},
    ),
    Target("service.cache", "service, GET /cache/{key} (Redis GET)", "service", "/cache/bench", {}),
    Target(
        "unmetered.cache",
        "service without metrics, GET /cache/{key} (Redis GET)",
        "service",
        "/cache/bench",
        {"METRICS_ENABLED": "false"},
    ),
    Target(
        "service.notes", "service, GET /notes/{id} (DB read)", "service", "/notes/{note_id}", {}
    ),
    Target(
        "service.upstream",
        "service, GET /upstream/{path} (HTTP GET)",
        "service",
        "/upstream/ping",
        {},
    ),
    # The libraries alone (apps/floors.py): subtract the first from the others.
    Target("floors.nothing", "no framework: an empty Starlette route", "floors", "/nothing", {}),
    Target("floors.redis", "no framework: one redis-py GET", "floors", "/redis", {}),
    Target(
        "floors.orm",
        "no framework: one AsyncSession get(Note) + commit",
        "floors",
        "/orm/{note_id}",
        {},
    ),
    Target(
        "floors.http", "no framework: one GET with the service's httpx client", "floors", "/http", {}
    ),
]


def _instructions(valgrind: str, argv: list[str], env: Mapping[str, str], cwd: Path) -> int:
    done = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.DEVNULL,  # the service's log lines
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    match = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"failed ({done.returncode}) under callgrind: {argv}\n{done.stderr}")
    return int(match.group(1))


def count_per_request(
    valgrind: str,
    python: Path,
    apps: Path,
    project: Path,
    env: Mapping[str, str],
    note_id: int,
    requests: int,
) -> dict[str, float]:
    """Instructions per request of each target, two callgrind runs at a time."""
    runs = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for target in TARGETS:
            path = target.path.format(note_id=note_id)
            for count in (0, requests):
                argv = [str(python), str(apps / "drive.py"), target.module, path, str(count)]
                # A fixed hash seed: with a random one, the imports' counts alone differ by
                # about a million instructions from run to run; with it, by a few hundred.
                run_env = {**env, **target.env, "PYTHONPATH": str(apps), "PYTHONHASHSEED": "0"}
                runs[target.key, count] = pool.submit(
                    _instructions, valgrind, argv, run_env, project
                )
    return {
        target.key: (runs[target.key, requests].result() - runs[target.key, 0].result()) / requests
        for target in TARGETS
    }
