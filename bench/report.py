"""The checks against the targets, and the tables: printed, and written as JSON and Markdown.

A ratio is computed per round (both rows measured in that round) and reported as the median of
the rounds with their spread; a target is met (PASS) only when every round meets it, missed
(MISS) when the median does not, and UNSURE when the median meets it but a round does not.
"""

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from endpoints import ENDPOINTS, FLOOD_CONNECTIONS
from instructions import TARGETS
from lifecycle import ImportFloor, Startup
from serve import Served


@dataclass(frozen=True)
class Check:
    name: str
    measured: str
    target: str
    # PASS, MISS, UNSURE (the rounds' spread crosses the target), INFO (no target), or INVALID
    # (a measurement behind it had errors)
    result: str
    value: float


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}"


def evaluate(
    served: Served,
    instructions: Mapping[str, float],
    startup: Startup,
    floor: ImportFloor,
    bakes: Mapping[str, float],
    suite: tuple[float, int] | None,
) -> list[Check]:
    series = served.series

    def per_round(a: str, b: str, value: str) -> list[float]:
        pairs = zip(series[a].rounds, series[b].rounds, strict=True)
        return [getattr(x, value) / getattr(y, value) for x, y in pairs]

    def result(keys: Sequence[str], meets: Callable[[float], bool] | None, values: Sequence[float]) -> str:
        if any(series[key].errors for key in keys):
            return "INVALID"
        if meets is None:
            return "INFO"
        if all(meets(v) for v in values):
            return "PASS"
        return "UNSURE" if meets(statistics.median(values)) else "MISS"

    def rps_ratio(name: str, a: str, b: str, target: float | None) -> Check:
        ratios = per_round(a, b, "rps")
        value = statistics.median(ratios)
        meets = None if target is None else (lambda r: r >= target)
        shown = "(report)" if target is None else f"≥ {target:g}×"
        measured = f"{value:.2f}× ({_spread(ratios)})"
        return Check(name, measured, shown, result([a, b], meets, ratios), value)

    def p99_at_most(name: str, a: str, b: str, target: float | None) -> Check:
        ratios = per_round(a, b, "p99_ms")
        value = statistics.median(ratios)
        meets = None if target is None else (lambda r: r <= target)
        x, y = series[a].median(lambda r: r.p99_ms), series[b].median(lambda r: r.p99_ms)
        measured = f"{value:.2f}× ({_spread(ratios)}): {x:.1f} vs {y:.1f} ms"
        shown = "(report)" if target is None else f"≤ {target:g}×"
        return Check(name, measured, shown, result([a, b], meets, ratios), value)

    def at_most(name: str, value: float, unit: str, limit: float, note: str = "") -> Check:
        passed = value <= limit if unit != "MB" else value < limit
        sign = "<" if unit == "MB" else "≤"
        shown = f"{value:.3f} s" if unit == "s" else f"{value:.1f} {unit}"
        status = "PASS" if passed else "MISS"
        return Check(name, shown + note, f"{sign} {limit:g} {unit}", status, value)

    def instruction_ratio(name: str, a: str, b: str) -> Check:
        # b's instructions per request over a's: like a req/s ratio, higher is better for a.
        value = instructions[b] / instructions[a]
        return Check(name, f"{value:.2f}×", "(report)", "INFO", value)

    def info(name: str, measured: str, value: float) -> Check:
        return Check(name, measured, "(report)", "INFO", value)

    codes = sorted(set(startup.exit_codes))
    sink = served.spans_exported
    checks = [
        rps_ratio("/health/live: service / bare app", "service.live", "bare.live", 0.85),
        rps_ratio(
            "/health/live: service with LOG_LEVEL=WARNING / bare app",
            "quiet.live",
            "bare.live",
            None,
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
        rps_ratio("/health/live: metrics on / off", "service.live", "unmetered.live", None),
        rps_ratio("/health/live: tracing on / off", "traced.live", "service.live", None),
        rps_ratio("Redis GET route / bare app", "service.cache", "bare.live", 0.5),
        rps_ratio("Redis GET route / libraries alone", "service.cache", "floors.redis", None),
        p99_at_most(
            "Redis GET route p99 / libraries alone", "service.cache", "floors.redis", 1.0
        ),
        rps_ratio("Redis GET route: metrics on / off", "service.cache", "unmetered.cache", 0.95),
        instruction_ratio(
            "Redis GET route, by instructions per request: metrics on / off",
            "service.cache",
            "unmetered.cache",
        ),
        rps_ratio("Redis GET route: tracing on / off", "traced.cache", "service.cache", None),
        info(
            "exports the traced service sent to the OTLP sink",
            f"{sink['exports']} ({sink['bytes'] / 1e6:.1f} MB)",
            sink["exports"],
        ),
        rps_ratio("DB read route / bare app", "service.notes", "bare.live", 0.15),
        rps_ratio("DB read route / libraries alone", "service.notes", "floors.orm", None),
        p99_at_most("DB read route p99 / libraries alone", "service.notes", "floors.orm", 1.0),
        p99_at_most(
            f"DB read route p99: under {FLOOD_CONNECTIONS} readiness callers / calm",
            "service.notes.flooded",
            "service.notes",
            None,
        ),
        rps_ratio(
            "/health/ready (3 checks) / naive PostgreSQL check alone",
            "service.ready",
            "naive.ready.postgres",
            10,
        ),
        rps_ratio(
            "/health/ready (3 checks) / naive Redis check alone",
            "service.ready",
            "naive.ready.redis",
            None,
        ),
        rps_ratio(
            "/health/ready (shared checks) / /health/live, service",
            "service.ready",
            "service.live",
            None,
        ),
        info(
            "naive: httpx.AsyncClient built and closed per request, req/s",
            f"{series['naive.httpx_client'].median(lambda r: r.rps):.0f}",
            series["naive.httpx_client"].median(lambda r: r.rps),
        ),
        rps_ratio("combined route: service / naive", "service.combined", "naive.combined", 10),
        rps_ratio("combined route / plain asyncio loop", "service.combined", "raw.combined", 0.8),
        rps_ratio("upstream route / bare app", "service.upstream", "bare.live", 0.1),
        rps_ratio("upstream route / libraries alone", "service.upstream", "floors.http", None),
        info(
            "the upstream alone, req/s",
            f"{series['upstream.alone'].median(lambda r: r.rps):.0f}",
            series["upstream.alone"].median(lambda r: r.rps),
        ),
        at_most("start → /health/ready 200 (median)", startup.ready_median, "s", 0.6),
        info(
            "start → app imported, nothing opened (median)", f"{floor.seconds:.3f} s", floor.seconds
        ),
        at_most(
            "SIGTERM → exit, idle (median)",
            startup.exit_median,
            "s",
            0.25,
            f" (exit status {', '.join(map(str, codes))})",
        ),
        at_most("peak RSS of the worker after the load", served.service_rss_mb, "MB", 80),
        info(
            "peak RSS of a process that only imported the app",
            f"{floor.peak_rss_mb:.1f} MB",
            floor.peak_rss_mb,
        ),
        info(
            "peak RSS of the bare FastAPI app after the load",
            f"{served.bare_rss_mb:.1f} MB",
            served.bare_rss_mb,
        ),
    ]
    total = sum(bakes.values())
    checks.append(info(f"bake all {len(bakes)} combinations", f"{total:.2f} s", total))
    if suite is not None:
        seconds, code = suite
        failed = "" if code == 0 else f" (FAILED, exit {code})"
        status = "INFO" if code == 0 else "MISS"
        checks.append(
            Check("template suite (make test)", f"{seconds:.0f} s{failed}", "(report)", status, seconds)
        )
    return checks


def table_rows(report: Mapping[str, Any]) -> list[list[list[str]]]:
    """The checks, the load results, the instruction counts: each a table with a header row."""
    checks = [["check", "measured (median, spread of the rounds)", "target", "result"]]
    checks += [[c["name"], c["measured"], c["target"], c["result"]] for c in report["checks"]]
    load = [
        ["endpoint", "window s", "req/s", "req/s spread", "p50 ms", "p99 ms", "p99.9 ms", "errors"]
    ]
    descriptions = {endpoint.key: endpoint.description for endpoint in ENDPOINTS}
    for key, data in report["load"].items():
        rps = [r["rps"] for r in data["rounds"]]
        load.append(
            [
                descriptions[key],
                str(data["window_seconds"]),
                f"{data['rps_median']:.0f}",
                f"{min(rps):.0f}–{max(rps):.0f}",
                f"{data['p50_ms_median']:.1f}",
                f"{data['p99_ms_median']:.1f}",
                f"{data['p999_ms_median']:.1f}",
                str(data["errors"]),
            ]
        )
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
                f"{config['connections']} connections, {config['rounds']} rounds after a "
                f"discarded warm-up round; windows of {config['seconds']} s, longer for slow "
                "rows (the load table shows each).",
                f"Versions: {versions}.",
                *(markdown_table(table) for table in table_rows(report)),
            ]
        )
        + "\n"
    )
