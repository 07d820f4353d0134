"""Benchmark the generated service side by side with a bare FastAPI app, the per-request
connection pattern and a plain asyncio loop; time its startup, its shutdown and the template.

    python bench/run.py                    # the full run (~13 minutes): `make bench`
    python bench/run.py --quick            # a ~6 minute smoke run: `make bench BENCH_ARGS=--quick`
    python bench/run.py --template-suite   # also time the template's `make test`

Bakes the all-on service into build/bench, installs its uv.lock in its own venv, migrates a
benchmark database, starts a local upstream and every app under test with the same uvicorn
settings, then runs wrk against them in alternating rounds and reports medians and ratios, and
counts the instructions a request costs with callgrind (bench/instructions.py).
Prints a table and writes bench/results/latest.json and latest.md (the README's table).
Runs with the template's dev venv (cookiecutter, uv), as `make bench` does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import product
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cookiecutter.main import cookiecutter  # type: ignore[import-untyped]
from uv import find_uv_bin

from instructions import TARGETS, count_per_request
from loadgen import WrkResult, ensure_installed, run_wrk, run_wrk_under_flood, wrk_version
from processes import Processes, free_port, peak_rss_mb, processes, request_json, wait_for_status

REPO = Path(__file__).resolve().parent.parent
APPS = REPO / "bench" / "apps"
BUILD = REPO / "build" / "bench"
PACKAGE = "my_service"  # the package name of the default answers
FLAGS = ("use_postgres", "use_redis", "use_http_client", "use_opentelemetry")
DB_NAME = "bench_my_service"
WRK_THREADS = 1  # one core for wrk, the other for the app under test

# Every app under test is served exactly like this: one process, uvloop, httptools, no access
# log (the service logs each request itself, in its middleware).
UVICORN = [
    *("--host", "127.0.0.1", "--workers", "1"),
    *("--loop", "uvloop", "--http", "httptools", "--no-access-log"),
]


@dataclass(frozen=True)
class Mode:
    rounds: int
    seconds: int  # per wrk run
    warmup_seconds: int  # per wrk run of the discarded first round
    startup_runs: int
    counted_requests: int  # per callgrind run


FULL = Mode(rounds=5, seconds=5, warmup_seconds=2, startup_runs=7, counted_requests=1000)
QUICK = Mode(rounds=2, seconds=2, warmup_seconds=1, startup_runs=3, counted_requests=300)


@dataclass(frozen=True)
class Endpoint:
    key: str
    # "service", "quiet" (the service with LOG_LEVEL=WARNING: no request log), "unmetered" (the
    # service with METRICS_ENABLED=false), "traced" (the service baked with use_opentelemetry,
    # exporting to a local sink), "bare", "naive", or "raw": the plain asyncio loop, not served
    app: str
    path: str
    description: str
    # Another path of the same app that 48 more connections call meanwhile: a probe flood.
    flood: str | None = None


# Concurrent readiness callers of the flood: every kubelet and load balancer of a large
# deployment at once, or anyone on the internet (the probe needs no authentication).
FLOOD_CONNECTIONS = 48

# A round runs these in this order, and the next round in the reverse order: each pair compared
# is measured back to back, in both orders.
ENDPOINTS = [
    Endpoint("bare.live", "bare", "/health/live", "bare FastAPI app, GET /health/live"),
    Endpoint(
        "bare.routed",
        "bare",
        "/routed/health/live",
        "bare FastAPI app, the same route in an included APIRouter",
    ),
    Endpoint("service.live", "service", "/health/live", "service, GET /health/live"),
    Endpoint(
        "unmetered.live",
        "unmetered",
        "/health/live",
        "service without metrics (METRICS_ENABLED=false), GET /health/live",
    ),
    Endpoint(
        "traced.live",
        "traced",
        "/health/live",
        "service with tracing, exporting to a local OTLP sink, GET /health/live",
    ),
    Endpoint(
        "quiet.live",
        "quiet",
        "/health/live",
        "service without its request log line (LOG_LEVEL=WARNING), GET /health/live",
    ),
    Endpoint(
        "service.ready", "service", "/health/ready", "service, GET /health/ready (3 resources)"
    ),
    Endpoint("naive.ready", "naive", "/health/ready", "naive, GET /health/ready"),
    Endpoint("naive.combined", "naive", "/bench/combined", "naive, GET /bench/combined"),
    Endpoint(
        "service.combined",
        "service",
        "/bench/combined",
        "service, GET /bench/combined (SELECT 1, Redis GET, HTTP GET)",
    ),
    Endpoint("raw.combined", "raw", "", "plain asyncio loop, the same 3 round trips"),
    Endpoint("service.cache", "service", "/cache/bench", "service, GET /cache/{key} (Redis GET)"),
    Endpoint(
        "unmetered.cache",
        "unmetered",
        "/cache/bench",
        "service without metrics, GET /cache/{key} (Redis GET)",
    ),
    Endpoint(
        "traced.cache",
        "traced",
        "/cache/bench",
        "service with tracing, GET /cache/{key} (Redis GET)",
    ),
    Endpoint("service.notes", "service", "/notes/{note_id}", "service, GET /notes/{id} (DB read)"),
    Endpoint(
        "service.notes.flooded",
        "service",
        "/notes/{note_id}",
        f"service, GET /notes/{{id}} while {FLOOD_CONNECTIONS} more connections call"
        " /health/ready (their non-2xx count as errors)",
        flood="/health/ready",
    ),
    Endpoint(
        "service.upstream", "service", "/upstream/ping", "service, GET /upstream/{path} (HTTP GET)"
    ),
]


# --- setup ------------------------------------------------------------------------------------


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
    run([find_uv_bin(), *sync, "--python", sys.executable], cwd=project, env={"UV_PROJECT_ENVIRONMENT": str(venv)})
    return venv / "bin" / "python"


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def admin(python: Path, *args: str) -> str:
    return run([python, APPS / "admin.py", *args])


# --- load -------------------------------------------------------------------------------------


@dataclass
class Series:
    """One endpoint's measurements, one per round."""

    rounds: list[WrkResult] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.rounds)

    @property
    def p99_ms(self) -> float:
        return statistics.median(r.p99_ms for r in self.rounds)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)


def measure_raw(python: Path, env: Mapping[str, str], connections: int, seconds: int) -> WrkResult:
    argv: list[str | Path] = [python, APPS / "raw_loop.py", "--pg-dsn", env["BENCH_PG_DSN"]]
    argv += ["--redis-url", env["BENCH_REDIS_URL"], "--upstream-url", env["BENCH_UPSTREAM_URL"]]
    argv += ["--concurrency", str(connections), "--duration", str(seconds)]
    data = json.loads(run(argv))
    return WrkResult(
        rps=data["rps"],
        requests=data["requests"],
        p50_ms=data["p50_ms"],
        p99_ms=data["p99_ms"],
        errors=data["errors"],
    )


def load_rounds(measure: Callable[[Endpoint, int], WrkResult], mode: Mode) -> dict[str, Series]:
    series = {endpoint.key: Series() for endpoint in ENDPOINTS}
    print(f"warm-up round ({mode.warmup_seconds} s per endpoint, discarded)", flush=True)
    for endpoint in ENDPOINTS:
        measure(endpoint, mode.warmup_seconds)
    for number in range(mode.rounds):
        order = ENDPOINTS if number % 2 == 0 else ENDPOINTS[::-1]
        print(f"round {number + 1}/{mode.rounds} ({mode.seconds} s per endpoint)", flush=True)
        for endpoint in order:
            result = measure(endpoint, mode.seconds)
            series[endpoint.key].rounds.append(result)
            errors = f"  ERRORS: {result.errors}" if result.errors else ""
            print(
                f"  {endpoint.key:17} {result.rps:8.0f} req/s  p99 {result.p99_ms:8.2f} ms{errors}",
                flush=True,
            )
    return series


@dataclass(frozen=True)
class Served:
    series: dict[str, Series]
    service_rss_mb: float
    bare_rss_mb: float
    note_id: int  # what GET /notes/{id} reads
    spans_exported: dict[str, int]  # what the OTLP sink received from the traced service


def serve_and_load(
    group: Processes,
    python: Path,
    project: Path,
    traced: tuple[Path, Path],
    envs: Mapping[str, Mapping[str, str]],
    ports: Mapping[str, int],
    wrk: str,
    connections: int,
    mode: Mode,
) -> Served:
    """Start the upstream, the OTLP sink and the apps under test, seed the data, run the
    rounds. `traced` is the python and project of the bake with tracing."""
    urls = {app: f"http://127.0.0.1:{port}" for app, port in ports.items()}
    # The upstream is not under test: a plain ASGI app without lifespan.
    started = {}
    sink_argv: list[str | Path] = [python, APPS / "otlp_sink.py", "--port", str(ports["sink"])]
    started["sink"] = group.start("sink", sink_argv, env={}, cwd=project)
    for app in ("upstream", "service", "quiet", "unmetered", "traced", "bare", "naive"):
        lifespan = "off" if app == "upstream" else "on"
        module = "service" if app in {"quiet", "unmetered", "traced"} else app
        app_python, app_project = traced if app == "traced" else (python, project)
        argv: list[str | Path] = [app_python.parent / "uvicorn", f"{module}:app"]
        argv += ["--app-dir", APPS, "--port", str(ports[app])]
        started[app] = group.start(
            app, [*argv, "--lifespan", lifespan, *UVICORN], env=envs.get(app, {}), cwd=app_project
        )
    first_paths = {"upstream": "/ping", "bare": "/health/live", "sink": "/count"}
    for app, process in started.items():
        wait_for_status(urls[app] + first_paths.get(app, "/health/ready"), process, timeout=30)

    # What the read routes read.
    request_json("PUT", urls["service"] + "/cache/bench", {"value": "hello", "ttl_seconds": 86400})
    note = request_json("POST", urls["service"] + "/notes", {"text": "benchmark"})
    assert isinstance(note, dict)
    targets = {
        e.key: urls[e.app] + e.path.format(note_id=note["id"]) for e in ENDPOINTS if e.app != "raw"
    }
    for key, url in targets.items():  # each answers 200 before the load starts
        wait_for_status(url, started[key.split(".")[0]], timeout=5)

    def measure(endpoint: Endpoint, seconds: int) -> WrkResult:
        if endpoint.app == "raw":
            return measure_raw(python, envs["naive"], connections, seconds)
        if endpoint.flood is None:
            result = run_wrk(
                wrk,
                targets[endpoint.key],
                connections=connections,
                threads=WRK_THREADS,
                seconds=seconds,
            )
        else:
            result = run_wrk_under_flood(
                wrk,
                targets[endpoint.key],
                urls[endpoint.app] + endpoint.flood,
                connections=connections,
                seconds=seconds,
                flood_connections=FLOOD_CONNECTIONS,
            )
        time.sleep(0.2)  # let the closed connections settle between runs
        return result

    series = load_rounds(measure, mode)
    sink = request_json("GET", urls["sink"] + "/count", None)
    assert isinstance(sink, dict)
    return Served(
        spans_exported=sink,
        series=series,
        service_rss_mb=peak_rss_mb(started["service"].pid),
        bare_rss_mb=peak_rss_mb(started["bare"].pid),
        note_id=note["id"],
    )


# --- startup, shutdown, template --------------------------------------------------------------


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
        time.sleep(0.3)  # idle: no request in flight
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


def time_template_suite() -> tuple[float, int]:
    """Seconds and exit status of the template's `make test`."""
    started = time.perf_counter()
    code = subprocess.run(["make", "test"], cwd=REPO, check=False).returncode
    return time.perf_counter() - started, code


# --- report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    measured: str
    target: str
    result: str  # PASS, MISS, INFO (no target), or INVALID (a measurement behind it had errors)
    value: float


def evaluate(
    served: Served,
    instructions: Mapping[str, float],
    startup: Startup,
    floor: ImportFloor,
    bakes: Mapping[str, float],
    suite: tuple[float, int] | None,
) -> list[Check]:
    series = served.series

    def result(passed: bool | None, *keys: str) -> str:
        if any(series[key].errors for key in keys):
            return "INVALID"
        if passed is None:
            return "INFO"
        return "PASS" if passed else "MISS"

    def rps_ratio(name: str, a: str, b: str, target: float | None) -> Check:
        # The median over rounds of a's req/s over b's, each pair measured in the same round.
        pairs = zip(series[a].rounds, series[b].rounds, strict=True)
        value = statistics.median(x.rps / y.rps for x, y in pairs)
        passed = None if target is None else value >= target
        shown = "(report)" if target is None else f"≥ {target:g}×"
        return Check(name, f"{value:.2f}×", shown, result(passed, a, b), value)

    def lower_p99(name: str, a: str, b: str) -> Check:
        x, y = series[a].p99_ms, series[b].p99_ms
        return Check(name, f"{x:.1f} vs {y:.1f} ms", "lower", result(x < y, a, b), x)

    def p99_ratio(name: str, a: str, b: str) -> Check:
        # The median over rounds of a's p99 over b's, each pair measured in the same round.
        pairs = zip(series[a].rounds, series[b].rounds, strict=True)
        value = statistics.median(x.p99_ms / y.p99_ms for x, y in pairs)
        return Check(name, f"{value:.2f}×", "(report)", result(None, a, b), value)

    def at_most(name: str, value: float, unit: str, limit: float, note: str = "") -> Check:
        passed = value <= limit if unit != "MB" else value < limit
        sign = "<" if unit == "MB" else "≤"
        shown = f"{value:.3f} s" if unit == "s" else f"{value:.1f} {unit}"
        return Check(name, shown + note, f"{sign} {limit:g} {unit}", result(passed), value)

    def instruction_ratio(name: str, a: str, b: str) -> Check:
        # b's instructions per request over a's: like a req/s ratio, higher is better for a.
        value = instructions[b] / instructions[a]
        return Check(name, f"{value:.2f}×", "(report)", "INFO", value)

    codes = sorted(set(startup.exit_codes))
    checks = [
        rps_ratio("/health/live: service / bare app", "service.live", "bare.live", 0.95),
        rps_ratio(
            "/health/live without the request log line / bare app", "quiet.live", "bare.live", None
        ),
        rps_ratio(
            "/health/live: service / bare app with the route in an APIRouter",
            "service.live",
            "bare.routed",
            None,
        ),
        instruction_ratio(
            "/health/live, by instructions per request in-process: service / bare app",
            "service.live",
            "bare.live",
        ),
        instruction_ratio(
            "the same, service / bare app with the route in an APIRouter",
            "service.live",
            "bare.routed",
        ),
        rps_ratio("/health/ready: service / naive", "service.ready", "naive.ready", 10),
        rps_ratio(
            "/health/ready (shared checks) / /health/live, service",
            "service.ready",
            "service.live",
            None,
        ),
        p99_ratio(
            f"DB read route p99: under {FLOOD_CONNECTIONS} readiness callers / calm",
            "service.notes.flooded",
            "service.notes",
        ),
        lower_p99("/health/ready p99: service vs naive", "service.ready", "naive.ready"),
        rps_ratio("combined route: service / naive", "service.combined", "naive.combined", 10),
        lower_p99("combined route p99: service vs naive", "service.combined", "naive.combined"),
        rps_ratio("Redis GET route / bare app", "service.cache", "bare.live", 0.5),
        rps_ratio(
            "Redis GET route: metrics on / off", "service.cache", "unmetered.cache", 0.95
        ),
        rps_ratio("/health/live: metrics on / off", "service.live", "unmetered.live", None),
        rps_ratio("Redis GET route: tracing on / off", "traced.cache", "service.cache", None),
        rps_ratio("/health/live: tracing on / off", "traced.live", "service.live", None),
        Check(
            "exports the traced service sent to the OTLP sink",
            f"{served.spans_exported['exports']} ({served.spans_exported['bytes'] / 1e6:.1f} MB)",
            "(report)",
            "INFO" if served.spans_exported["exports"] else "MISS",
            served.spans_exported["exports"],
        ),
        instruction_ratio(
            "Redis GET route, by instructions per request: metrics on / off",
            "service.cache",
            "unmetered.cache",
        ),
        rps_ratio("DB read route / bare app", "service.notes", "bare.live", 0.15),
        rps_ratio("upstream route / bare app", "service.upstream", "bare.live", None),
        rps_ratio("combined route / plain asyncio loop", "service.combined", "raw.combined", None),
        at_most("start → /health/ready 200 (median)", startup.ready_median, "s", 0.6),
        Check(
            "start → app imported, nothing opened (median)",
            f"{floor.seconds:.3f} s",
            "(report)",
            "INFO",
            floor.seconds,
        ),
        at_most(
            "SIGTERM → exit, idle (median)",
            startup.exit_median,
            "s",
            0.25,
            f" (exit status {', '.join(map(str, codes))})",
        ),
        at_most("peak RSS of the worker after the load", served.service_rss_mb, "MB", 80),
        Check(
            "peak RSS of a process that only imported the app",
            f"{floor.peak_rss_mb:.1f} MB",
            "(report)",
            "INFO",
            floor.peak_rss_mb,
        ),
        Check(
            "peak RSS of the bare FastAPI app after the load",
            f"{served.bare_rss_mb:.1f} MB",
            "(report)",
            "INFO",
            served.bare_rss_mb,
        ),
    ]
    total = sum(bakes.values())
    checks.append(
        Check(f"bake all {len(bakes)} combinations", f"{total:.2f} s", "(report)", "INFO", total)
    )
    if suite is not None:
        seconds, code = suite
        failed = "" if code == 0 else f" (FAILED, exit {code})"
        status = "INFO" if code == 0 else "MISS"
        checks.append(
            Check(
                "template suite (make test)",
                f"{seconds:.0f} s{failed}",
                "(report)",
                status,
                seconds,
            )
        )
    return checks


def table_rows(report: Mapping[str, Any]) -> list[list[list[str]]]:
    """The checks, the load results, the instruction counts: each a table with a header row."""
    checks = [["check", "measured", "target", "result"]]
    checks += [[c["name"], c["measured"], c["target"], c["result"]] for c in report["checks"]]
    load = [["endpoint", "req/s (median)", "p99 ms (median)", "errors"]]
    descriptions = {endpoint.key: endpoint.description for endpoint in ENDPOINTS}
    load += [
        [
            descriptions[key],
            f"{data['rps_median']:.0f}",
            f"{data['p99_ms_median']:.1f}",
            str(data["errors"]),
        ]
        for key, data in report["load"].items()
    ]
    counted = report["instructions_per_request"]
    instructions = [["in-process, no server (callgrind)", "instructions per request", "× bare"]]
    instructions += [
        [
            target.description,
            f"{counted[target.key]:,.0f}",
            f"{counted[target.key] / counted['bare.live']:.2f}",
        ]
        for target in TARGETS
    ]
    return [checks, load, instructions]


def text_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "|".join(" --- " for _ in rows[0]) + "|")
    return "\n".join(lines)


def markdown(report: Mapping[str, Any]) -> str:
    machine, config = report["machine"], report["config"]
    versions = ", ".join(f"{name} {v}" for name, v in report["versions"].items() if v)
    return (
        "\n\n".join(
            [
                f"{report['date']}, `{config['command']}`: {machine['cores']} cores "
                f"({machine['cpu']}), Linux {machine['kernel']}; {config['wrk']}, "
                f"{config['connections']} connections, {config['rounds']} rounds × "
                f"{config['seconds']} s after a discarded warm-up round.",
                f"Versions: {versions}.",
                *(markdown_table(table) for table in table_rows(report)),
            ]
        )
        + "\n"
    )


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a ~6 minute smoke run")
    parser.add_argument("--rounds", type=int, help="measured rounds (default 5, quick 2)")
    parser.add_argument("--seconds", type=int, help="seconds per wrk run (default 5, quick 2)")
    parser.add_argument(
        "--connections", type=int, default=32, help="wrk connections = workers of the plain loop"
    )
    parser.add_argument("--template-suite", action="store_true", help="also time `make test`")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="an admin URL: the benchmark creates its own database and drops it at the end",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "latest.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    base = QUICK if args.quick else FULL
    mode = Mode(
        args.rounds or base.rounds,
        args.seconds or base.seconds,
        base.warmup_seconds,
        base.startup_runs,
        base.counted_requests,
    )
    began = time.perf_counter()
    load_average = os.getloadavg()
    if load_average[0] > (os.cpu_count() or 1) / 2:
        print(f"warning: the machine is busy (load average {load_average[0]:.1f})", flush=True)
    wrk = ensure_installed("wrk", "wrk")
    valgrind = ensure_installed("valgrind", "valgrind")

    print("baking and installing the all-on service ...", flush=True)
    shutil.rmtree(BUILD, ignore_errors=True)
    logs = BUILD / "logs"
    logs.mkdir(parents=True)
    config = cookiecutter_config(BUILD)
    project = bake(BUILD, config, {})
    python = install(project, BUILD / "venv")
    traced_project = bake(BUILD / "traced", config, {"use_opentelemetry": True})
    traced = (install(traced_project, BUILD / "venv-traced"), traced_project)
    admin_dsn = args.database_url.replace("postgresql+asyncpg://", "postgresql://")
    bench_dsn = with_database(admin_dsn, DB_NAME)
    versions = json.loads(admin(python, "versions", admin_dsn, args.redis_url))

    admin(python, "create-db", admin_dsn, DB_NAME)
    try:
        apps = ("upstream", "sink", "service", "quiet", "unmetered", "traced", "bare", "naive")
        ports = {app: free_port() for app in apps}
        upstream = f"http://127.0.0.1:{ports['upstream']}"
        service_env = {
            "DATABASE_URL": bench_dsn,
            "REDIS_URL": args.redis_url,
            "HTTP_CLIENT_BASE_URL": upstream,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
        naive_env = {
            "BENCH_PG_DSN": bench_dsn,
            "BENCH_REDIS_URL": args.redis_url,
            "BENCH_UPSTREAM_URL": upstream,
        }
        run([python.parent / "alembic", "upgrade", "head"], cwd=project, env=service_env)
        with processes(logs) as group:
            print(f"startup and shutdown: {mode.startup_runs} starts of python -m {PACKAGE}")
            startup = measure_startup(group, python, project, service_env, mode.startup_runs)
            floor = measure_import_floor(python, project, service_env, mode.startup_runs)
            envs = {
                "service": service_env,
                "quiet": service_env | {"LOG_LEVEL": "WARNING"},
                "unmetered": service_env | {"METRICS_ENABLED": "false"},
                "traced": service_env
                | {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports['sink']}"},
                "naive": naive_env,
            }
            served = serve_and_load(
                group, python, project, traced, envs, ports, wrk, args.connections, mode
            )
        print(f"counting instructions: {mode.counted_requests} requests per run", flush=True)
        instructions = count_per_request(
            valgrind, python, APPS, project, service_env, served.note_id, mode.counted_requests
        )
    finally:
        admin(python, "drop-db", admin_dsn, DB_NAME)
    with (logs / "service.log").open("rb") as log:
        log_lines = sum(1 for _ in log)

    print("baking every combination ...", flush=True)
    bakes = time_bakes(config)
    suite = None
    if args.template_suite:
        print("running the template suite (make test) ...", flush=True)
        suite = time_template_suite()

    checks = evaluate(served, instructions, startup, floor, bakes, suite)
    cpu_lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu_names = [
        line.split(":", 1)[1].strip() for line in cpu_lines if line.startswith("model name")
    ]
    cpu = cpu_names[0] if cpu_names else platform.processor()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cores": os.cpu_count(),
            "cpu": cpu,
            "kernel": platform.release(),
            "load_average_before": [round(x, 2) for x in load_average],
        },
        "versions": versions,
        "config": {
            "command": "make bench" + (" BENCH_ARGS=--quick" if args.quick else ""),
            "wrk": wrk_version(wrk),
            "wrk_threads": WRK_THREADS,
            "connections": args.connections,
            "rounds": mode.rounds,
            "seconds": mode.seconds,
            "warmup_seconds": mode.warmup_seconds,
            "uvicorn": " ".join(UVICORN),
            "service_logging": "LOG_FORMAT=json, LOG_LEVEL=INFO, stdout to a file",
            "service_log_lines": log_lines,
            "startup_runs": mode.startup_runs,
        },
        "checks": [asdict(check) for check in checks],
        "load": {
            key: {
                "rps_median": s.rps,
                "p99_ms_median": s.p99_ms,
                "errors": s.errors,
                "rounds": [asdict(r) for r in s.rounds],
            }
            for key, s in served.series.items()
        },
        "instructions_per_request": instructions,
        "startup": asdict(startup),
        "import_floor": asdict(floor),
        "tracing_sink": served.spans_exported,
        "memory": {
            "service_peak_rss_mb": served.service_rss_mb,
            "bare_peak_rss_mb": served.bare_rss_mb,
        },
        "template": {
            "bake_s": bakes,
            "suite_s": None if suite is None else suite[0],
            "suite_exit": None if suite is None else suite[1],
        },
        "duration_s": round(time.perf_counter() - began, 1),
    }

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(report))
    print("\n" + "\n\n".join(text_table(table) for table in table_rows(report)) + "\n")
    print(
        f"{report['config']['wrk']}, {WRK_THREADS} thread, {args.connections} connections, "
        f"{mode.rounds} rounds × {mode.seconds} s (medians); {os.cpu_count()} cores; "
        f"{report['duration_s']} s in all"
    )
    print(f"written: {args.output} and {args.output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
