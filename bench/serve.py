"""The apps under test, served side by side: start them, seed what the read routes read, and
load them round by round (bench/rounds.py)."""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bakes import APPS, run
from endpoints import ENDPOINTS, FLOOD_CONNECTIONS, Endpoint
from loadgen import WrkResult, run_wrk, run_wrk_under_flood
from processes import (
    Processes,
    free_port,
    http_status,
    peak_rss_mb,
    request_json,
    wait_for_status,
    wait_until_idle,
)
from rounds import Mode, Series, load_rounds

WRK_THREADS = 1  # one core for wrk, the other for the app under test

# Every app under test is served exactly like this: one process, uvloop, httptools, no access
# log (the service logs each request itself, in its middleware).
UVICORN = [
    *("--host", "127.0.0.1", "--workers", "1"),
    *("--loop", "uvloop", "--http", "httptools", "--no-access-log"),
]
# The apps served by uvicorn, and their module in bench/apps. The upstream is not under test: a
# plain ASGI app without lifespan.
MODULES = {
    "upstream": "upstream",
    "service": "service",
    "quiet": "service",
    "unmetered": "service",
    "traced": "service",
    "bare": "bare",
    "floors": "floors",
    "naive": "naive",
}
# What each app answers 200 to once it is ready.
READY_PATHS = {
    "upstream": "/ping",
    "bare": "/health/live",
    "floors": "/nothing",
    "naive": "/health/ready/redis",
    "sink": "/count",
}
# The most an app may take to work off what a run left in flight (a slow row's last requests).
IDLE_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Served:
    series: dict[str, Series]
    service_rss_mb: float
    bare_rss_mb: float
    note_id: int  # what GET /notes/{id} reads
    spans_exported: dict[str, int]  # what the OTLP sink received from the traced service


def serve_one(group: Processes, name: str, python: Path, project: Path, env: dict[str, str]) -> str:
    """The baked service under `name`, served by uvicorn as `make bench` serves it, once ready:
    its base URL (bench/ab.py and bench/pooler.py compare two such)."""
    port = free_port()
    process = group.start(
        name, [python.parent / "uvicorn", "my_service.main:app", "--port", str(port), *UVICORN], env=env, cwd=project
    )
    wait_for_status(f"http://127.0.0.1:{port}/health/ready", process, timeout=30)
    return f"http://127.0.0.1:{port}"


def start_apps(
    group: Processes,
    python: Path,
    project: Path,
    traced: tuple[Path, Path],
    envs: Mapping[str, Mapping[str, str]],
    ports: Mapping[str, int],
) -> dict[str, str]:
    """Start the OTLP sink and every app; their base URLs once each answers. `traced` is the
    python and project of the bake with tracing."""
    urls = {app: f"http://127.0.0.1:{port}" for app, port in ports.items()}
    started = {}
    sink_argv: list[str | Path] = [python, APPS / "otlp_sink.py", "--port", str(ports["sink"])]
    started["sink"] = group.start("sink", sink_argv, env={}, cwd=project)
    for app, module in MODULES.items():
        lifespan = "off" if app == "upstream" else "on"
        app_python, app_project = traced if app == "traced" else (python, project)
        argv: list[str | Path] = [app_python.parent / "uvicorn", f"{module}:app"]
        argv += ["--app-dir", APPS, "--port", str(ports[app]), "--lifespan", lifespan, *UVICORN]
        if app == "upstream":
            # Longer than any pause of a client under callgrind: uvicorn's 5 s default would
            # close a kept-alive connection as the slowed-down client reuses it (a 502).
            argv += ["--timeout-keep-alive", "300"]
        started[app] = group.start(app, argv, env=envs.get(app, {}), cwd=app_project)
    for app, process in started.items():
        wait_for_status(urls[app] + READY_PATHS.get(app, "/health/ready"), process, timeout=30)
    return urls


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
        p999_ms=data["p999_ms"],
        errors=data["errors"],
        seconds=data["seconds"],
    )


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
    """Start the apps, seed the data, run the rounds. The apps stay up until `group` stops
    them (the instruction counts call the upstream too)."""
    urls = start_apps(group, python, project, traced, envs, ports)
    # What the read routes read; the benchmark deletes its keys at the end.
    request_json("PUT", urls["service"] + "/cache/bench", {"value": "hello", "ttl_seconds": 3600})
    note = request_json("POST", urls["service"] + "/notes", {"text": "benchmark"})
    assert isinstance(note, dict)
    targets = {
        e.key: urls[e.app] + e.path.format(note_id=note["id"]) for e in ENDPOINTS if e.app != "raw"
    }
    for url in targets.values():  # each answers 200 before the load starts
        if (status := http_status(url)) != 200:
            raise SystemExit(f"{url} answered {status} before the load")

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
        wait_until_idle(group.pid_of(endpoint.app), timeout=IDLE_TIMEOUT_SECONDS)
        return result

    series = load_rounds(measure, mode, connections)
    sink = request_json("GET", urls["sink"] + "/count", None)
    assert isinstance(sink, dict)
    return Served(
        spans_exported=sink,
        series=series,
        service_rss_mb=peak_rss_mb(group.pid_of("service")),
        bare_rss_mb=peak_rss_mb(group.pid_of("bare")),
        note_id=note["id"],
    )
