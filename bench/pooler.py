"""What DB_BEHIND_POOLER costs without a pooler: the all-on service baked from the working tree,
served twice on PostgreSQL directly (DB_BEHIND_POOLER=false and =true), GET /notes/{id} loaded
in alternating rounds (wrk -t1 -c32, as `make bench`).

    .venv/bin/python bench/pooler.py
    .venv/bin/python bench/pooler.py --rounds 10 --seconds 5

About two minutes. Prints, per side, the medians of the rounds' requests per second, p99 and
p50, and on/off. With the setting each statement is parsed and planned anew, in two round trips
(prepare, then parse and run), where a cached prepared statement needs one. Runs with the
template's dev venv (`make bench` makes it); needs the servers `make bench` needs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bakes import BUILD, admin, bake, cookiecutter_config, install, run, with_database
from loadgen import WrkResult, add_ab_arguments, ensure_installed, run_wrk
from processes import processes, request_json, wait_until_idle
from serve import serve_one

SIDES = ("off", "on")
DB_NAME = "bench_pooler"



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ab_arguments(parser, rounds=8)
    args = parser.parse_args()
    wrk = ensure_installed("wrk", "wrk")
    work = BUILD.parent / "pooler"
    run(["rm", "-rf", work])
    work.mkdir(parents=True)
    admin_dsn = args.database_url.replace("postgresql+asyncpg://", "postgresql://")
    with tempfile.TemporaryDirectory() as home:
        project = bake(work, cookiecutter_config(Path(home)), {})
    python = install(project, work / "venv")
    env = {
        "DATABASE_URL": with_database(admin_dsn, DB_NAME),
        "DB_SCHEMA_CHECK": "false",
        "REDIS_URL": args.redis_url,
        "LOG_LEVEL": "WARNING",
    }
    admin(python, "create-db", admin_dsn, DB_NAME)
    try:
        run([python, "-m", "my_service.migrate"], cwd=project, env=env)
        with processes(work) as group:
            sides = {side: env | {"DB_BEHIND_POOLER": str(side == "on").lower()} for side in SIDES}
            urls = {side: serve_one(group, side, python, project, sides[side]) for side in SIDES}
            note = request_json("POST", urls["off"] + "/notes", {"text": "bench"})
            path = f"/notes/{note['id']}"  # type: ignore[index]
            results: dict[str, list[WrkResult]] = {side: [] for side in SIDES}
            for side in SIDES:  # a warm-up round each, not counted
                run_wrk(wrk, urls[side] + path, connections=args.connections, threads=1, seconds=2)
            for number in range(args.rounds):
                for side in SIDES if number % 2 == 0 else reversed(SIDES):
                    result = run_wrk(
                        wrk, urls[side] + path, connections=args.connections, threads=1, seconds=args.seconds
                    )
                    if result.errors:
                        raise SystemExit(f"DB_BEHIND_POOLER {side}: {result.errors} errors in a round")
                    results[side].append(result)
                    wait_until_idle(group.pid_of(side), timeout=60)
    finally:
        admin(python, "drop-db", admin_dsn, DB_NAME)
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, list[WrkResult]]) -> None:
    def median(side: str, value: str) -> float:
        return statistics.median(getattr(result, value) for result in results[side])

    print(
        f"GET /notes/{{id}} on PostgreSQL directly, wrk -t1 -c{args.connections},"
        f" {args.rounds} rounds of {args.seconds} s, alternating"
    )
    print(f"{'DB_BEHIND_POOLER':28}{'false':>12}{'true':>12}{'true/false':>14}")
    for label, value in (("requests per second", "rps"), ("p99 ms", "p99_ms"), ("p50 ms", "p50_ms")):
        off, on = median("off", value), median("on", value)
        print(f"{label:28}{off:12.1f}{on:12.1f}{on / off:13.2f}x")
    spread = {side: ", ".join(f"{result.rps:.0f}" for result in results[side]) for side in SIDES}
    print(f"  rounds' req/s: false {spread['off']}; true {spread['on']}")
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
