"""What the template tests' in-memory cache of Jinja's compiled templates saves per bake: bakes
of the working tree through the tests' own Baker, with the cache and without, in alternating
rounds (two answers taking turns, so both sides bake the same projects).

    .venv/bin/python bench/bake_cache.py
    .venv/bin/python bench/bake_cache.py --rounds 10 --bakes 4

Prints the median seconds per bake of each side and their ratio. Runs with the template's dev
venv; needs nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bakes import cookiecutter_config  # noqa: E402
from conftest import Baker  # noqa: E402

ANSWERS = [{}, {"use_redis": False, "use_rabbitmq": True}]


@contextlib.contextmanager
def next_steps_silenced() -> Iterator[None]:
    """The post-generation hook, a process of its own, prints the next steps on file 1."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def seconds_per_bake(baker: Baker, bakes: int, root: Path) -> float:
    started = time.perf_counter()
    with next_steps_silenced():
        for number in range(bakes):
            baker.bake(Path(tempfile.mkdtemp(dir=root)), ANSWERS[number % len(ANSWERS)])
    return (time.perf_counter() - started) / bakes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bakes", type=int, default=4, help="bakes per side and round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        cached = Baker(cookiecutter_config(root))
        fresh = replace(cached, keep_compiled_templates=False)
        seconds_per_bake(cached, len(ANSWERS), root)  # the cache filled, as after a test's first bake
        sides: dict[str, list[float]] = {"cached": [], "fresh": []}
        for _ in range(args.rounds):
            sides["fresh"].append(seconds_per_bake(fresh, args.bakes, root))
            sides["cached"].append(seconds_per_bake(cached, args.bakes, root))
    fresh_median, cached_median = (statistics.median(sides[side]) for side in ("fresh", "cached"))
    print(f"fresh:  {fresh_median:.3f} s per bake (median of {args.rounds} rounds of {args.bakes})")
    print(f"cached: {cached_median:.3f} s per bake")
    print(f"cached / fresh: {cached_median / fresh_median:.2f}x the time ({fresh_median / cached_median:.1f}x faster)")


if __name__ == "__main__":
    main()
