"""The load rounds: a discarded warm-up round that also sizes each endpoint's window, then
rounds whose order alternates, so that no endpoint always runs first or last."""

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from endpoints import BLOCKS, ENDPOINTS, Endpoint
from loadgen import WrkResult

# A window holds at least this many of the endpoint's median latencies: wrk counts the requests
# completed in its window, and the first ones complete one latency after it opens, so a window
# of STEADY_STATE_LATENCIES latencies undercounts by about 1/STEADY_STATE_LATENCIES.
STEADY_STATE_LATENCIES = 20
# ... but at most this many times the usual window (a slow endpoint's window is longer, not
# endless; the report shows each window).
MAX_WINDOW_FACTOR = 4


@dataclass(frozen=True)
class Mode:
    rounds: int
    seconds: int  # per wrk run
    warmup_seconds: int  # per wrk run of the discarded first round
    startup_runs: int
    counted_requests: int  # per callgrind run


FULL = Mode(rounds=5, seconds=5, warmup_seconds=2, startup_runs=7, counted_requests=1000)
QUICK = Mode(rounds=2, seconds=2, warmup_seconds=1, startup_runs=3, counted_requests=300)


@dataclass
class Series:
    """One endpoint's measurements, one per round."""

    window_seconds: int
    rounds: list[WrkResult] = field(default_factory=list)

    def median(self, value: Callable[[WrkResult], float]) -> float:
        return statistics.median(value(r) for r in self.rounds)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)


def window_seconds(warmup: WrkResult, mode: Mode, connections: int) -> int:
    # Little's law: with every connection busy, a request takes connections / rps seconds; a
    # warm-up that completed nothing had latencies longer than its window.
    latency = connections / warmup.rps if warmup.requests else math.inf
    wanted = STEADY_STATE_LATENCIES * max(latency, warmup.p50_ms / 1000)
    return min(max(math.ceil(wanted), mode.seconds), MAX_WINDOW_FACTOR * mode.seconds)


def round_order(number: int) -> list[Endpoint]:
    """Round 0 runs the blocks and their rows in order, round 1 both reversed, and so on: the
    rows of a block are always measured back to back."""
    if number % 2 == 0:
        return [endpoint for block in BLOCKS for endpoint in block]
    return [endpoint for block in reversed(BLOCKS) for endpoint in reversed(block)]


def load_rounds(
    measure: Callable[[Endpoint, int], WrkResult], mode: Mode, connections: int
) -> dict[str, Series]:
    print(f"warm-up round ({mode.warmup_seconds} s per endpoint, discarded)", flush=True)
    series = {}
    for endpoint in ENDPOINTS:
        window = window_seconds(measure(endpoint, mode.warmup_seconds), mode, connections)
        series[endpoint.key] = Series(window)
    for number in range(mode.rounds):
        print(f"round {number + 1}/{mode.rounds}", flush=True)
        for endpoint in round_order(number):
            result = measure(endpoint, series[endpoint.key].window_seconds)
            series[endpoint.key].rounds.append(result)
            errors = f"  ERRORS: {result.errors}" if result.errors else ""
            print(
                f"  {endpoint.key:22} {result.seconds:4.0f} s {result.rps:8.0f} req/s"
                f"  p50 {result.p50_ms:7.2f}  p99 {result.p99_ms:8.2f}"
                f"  p99.9 {result.p999_ms:8.2f} ms{errors}",
                flush=True,
            )
    return series
