"""Before and after, side by side in one run: the all-on service baked from an earlier commit of
the template and from the working tree, served alike, loaded in alternating rounds on one route.

    .venv/bin/python bench/ab.py --before ad1a2b3                     # GET /upstream/x
    .venv/bin/python bench/ab.py --before ad1a2b3 --path /health/live

For a change whose cost is one route's, where the full `make bench` (25 minutes) would measure
much else besides; about four minutes. Prints, per side, the medians of the rounds' requests per
second, p99 and p50 (wrk -t1 -c32, as `make bench`), of start to /health/ready and of the idle
peak RSS (seven starts each, the sides alternating), and after/before. Runs with the template's
dev venv (`make bench` makes it); needs the servers `make bench` needs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bakes import BUILD, REPO, cookiecutter_config, install, run
from cookiecutter.main import cookiecutter  # type: ignore[import-untyped]
from lifecycle import measure_startup
from loadgen import WrkResult, add_ab_arguments, ensure_installed, run_wrk
from processes import free_port, processes, wait_for_status, wait_until_idle
from serve import UVICORN, serve_one

SIDES = ("before", "after")


def bake_side(template: Path, output: Path, config: Path) -> Path:
    return Path(cookiecutter(str(template), no_input=True, output_dir=str(output), config_file=str(config)))


def before_template(revision: str, directory: Path) -> Path:
    """The template as it was at `revision`, extracted from git (nothing of the work tree)."""
    directory.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="a commit of the template")
    parser.add_argument("--path", default="/upstream/x", help="the route loaded")
    add_ab_arguments(parser, rounds=6)
    parser.add_argument("--starts", type=int, default=7, help="starts of each side, alternating")
    args = parser.parse_args()
    wrk = ensure_installed("wrk", "wrk")
    work = BUILD.parent / "ab"
    run(["rm", "-rf", work])
    work.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as home, processes(work) as group:
        config = cookiecutter_config(Path(home))
        templates = {"before": before_template(args.before, work / "template-before"), "after": REPO}
        projects = {side: bake_side(templates[side], work / side, config) for side in SIDES}
        pythons = {side: install(projects[side], work / f"venv-{side}") for side in SIDES}
        upstream_port = free_port()
        upstream = group.start(
            "upstream",
            [pythons["after"].parent / "uvicorn", "upstream:app", "--app-dir", REPO / "bench" / "apps",
             "--port", str(upstream_port), "--lifespan", "off", *UVICORN, "--timeout-keep-alive", "300"],
            env={},
            cwd=work,
        )
        wait_for_status(f"http://127.0.0.1:{upstream_port}/ping", upstream, timeout=30)
        env = {
            "DATABASE_URL": args.database_url,
            "DB_SCHEMA_CHECK": "false",
            "REDIS_URL": args.redis_url,
            "HTTP_CLIENT_BASE_URL": f"http://127.0.0.1:{upstream_port}",
        }
        urls = {side: serve_one(group, side, pythons[side], projects[side], env) for side in SIDES}
        results: dict[str, list[WrkResult]] = {side: [] for side in SIDES}
        for side in SIDES:  # a warm-up round each, not counted
            run_wrk(wrk, urls[side] + args.path, connections=args.connections, threads=1, seconds=2)
        for number in range(args.rounds):
            for side in SIDES if number % 2 == 0 else reversed(SIDES):
                result = run_wrk(wrk, urls[side] + args.path, connections=args.connections, threads=1, seconds=args.seconds)
                if result.errors:
                    raise SystemExit(f"{side}: {result.errors} errors in a round")
                results[side].append(result)
                wait_until_idle(group.pid_of(side), timeout=60)
        group.stop_all()
        startups: dict[str, dict[str, list[float]]] = {side: {"ready_s": [], "idle_peak_rss_mb": []} for side in SIDES}
        with processes(work) as starts:
            for _ in range(args.starts):  # alternating too: a busy moment hits both sides
                for side in SIDES:
                    startup = measure_startup(starts, pythons[side], projects[side], env, runs=1)
                    startups[side]["ready_s"] += startup.ready_s
                    startups[side]["idle_peak_rss_mb"] += startup.idle_peak_rss_mb
    report(args, results, startups)



def report(
    args: argparse.Namespace, results: dict[str, list[WrkResult]], startups: dict[str, dict[str, list[float]]]
) -> None:
    def median(side: str, value: str) -> float:
        return statistics.median(getattr(result, value) for result in results[side])

    print(f"GET {args.path}, wrk -t1 -c{args.connections}, {args.rounds} rounds of {args.seconds} s, alternating")
    print(f"{'':28}{'before':>12}{'after':>12}{'after/before':>14}")
    for label, value in (("requests per second", "rps"), ("p99 ms", "p99_ms"), ("p50 ms", "p50_ms")):
        before, after = median("before", value), median("after", value)
        print(f"{label:28}{before:12.1f}{after:12.1f}{after / before:13.2f}x")
    spread = {side: ", ".join(f"{result.rps:.0f}" for result in results[side]) for side in SIDES}
    print(f"  rounds' req/s: before {spread['before']}; after {spread['after']}")
    for label, attribute in (("start -> ready s", "ready_s"), ("idle peak RSS MB", "idle_peak_rss_mb")):
        before = statistics.median(startups["before"][attribute])
        after = statistics.median(startups["after"][attribute])
        print(f"{label:28}{before:12.3f}{after:12.3f}{after - before:+13.3f}")
    print(f"python {sys.version.split()[0]}, before = {args.before}, after = the work tree")


if __name__ == "__main__":
    main()
