"""Benchmark the generated service side by side with a bare FastAPI app, the libraries alone,
the per-request connection pattern and a plain asyncio loop; time its startup, its shutdown and
the template.

    python bench/run.py                    # the full run (~25 minutes): `make bench`
    python bench/run.py --quick            # a ~8 minute smoke run: `make bench BENCH_ARGS=--quick`
    python bench/run.py --template-suite   # also time the template's `make test`

Bakes the all-on service into build/bench and installs its uv.lock in its own venv (bakes.py),
migrates a benchmark database, starts a local upstream and every app under test with the same
uvicorn settings (serve.py), runs wrk against them in alternating rounds (rounds.py, the rows in
endpoints.py), times start and stop (lifecycle.py), counts the instructions a request costs
with callgrind (instructions.py), and reports medians, spreads and ratios (report.py).
Prints the tables and writes bench/results/latest.json and latest.md (the tables of docs/benchmarks.md).
Runs with the template's dev venv (cookiecutter, uv), as `make bench` does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apps.seeded import REDIS_KEY_PREFIX
from bakes import (
    APPS,
    BUILD,
    DB_NAME,
    PACKAGE,
    REPO,
    admin,
    bake,
    cookiecutter_config,
    install,
    run,
    time_bakes,
    with_database,
)
from instructions import count_per_request
from lifecycle import measure_import_floor, measure_startup, time_template_suite
from loadgen import ensure_installed, wrk_version
from processes import free_port, processes
from report import evaluate, markdown, table_rows, text_table
from rounds import FULL, QUICK, Mode
from serve import MODULES, UVICORN, WRK_THREADS, serve_and_load

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a ~8 minute smoke run")
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
        ports = {app: free_port() for app in ("sink", *MODULES)}
        upstream = f"http://127.0.0.1:{ports['upstream']}"
        service_env = {
            "DATABASE_URL": bench_dsn,
            "REDIS_URL": args.redis_url,
            "HTTP_CLIENT_BASE_URL": upstream,
            "REDIS_KEY_PREFIX": REDIS_KEY_PREFIX,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
        naive_env = {
            "BENCH_PG_DSN": bench_dsn,
            "BENCH_REDIS_URL": args.redis_url,
            "BENCH_UPSTREAM_URL": upstream,
        }
        run([python, "-m", f"{PACKAGE}.migrate"], cwd=project, env=service_env)
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
                "floors": service_env,
                "naive": naive_env,
            }
            served = serve_and_load(
                group, python, project, traced, envs, ports, wrk, args.connections, mode
            )
            # While the upstream still answers: the HTTP rows call it.
            print(f"counting instructions: {mode.counted_requests} requests per run", flush=True)
            instructions = count_per_request(
                valgrind, python, APPS, project, service_env, served.note_id, mode.counted_requests
            )
    finally:
        admin(python, "drop-db", admin_dsn, DB_NAME)
        admin(python, "delete-keys", args.redis_url, REDIS_KEY_PREFIX)
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
                "window_seconds": s.window_seconds,
                "rps_median": s.median(lambda r: r.rps),
                "p50_ms_median": s.median(lambda r: r.p50_ms),
                "p99_ms_median": s.median(lambda r: r.p99_ms),
                "p999_ms_median": s.median(lambda r: r.p999_ms),
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
        f"{mode.rounds} rounds, windows from {mode.seconds} s (medians); {os.cpu_count()} cores; "
        f"{report['duration_s']} s in all"
    )
    print(f"written: {args.output} and {args.output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
