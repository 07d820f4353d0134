"""Durations as they appear in log events and health reports."""

import time


def elapsed_ms(started: float) -> float:
    """Milliseconds since `started`, a `time.perf_counter()` reading, to two decimals."""
    return round((time.perf_counter() - started) * 1000, 2)
