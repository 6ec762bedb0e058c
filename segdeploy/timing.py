"""All timing in one place: the clock is read only after the device has finished the work."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def time_iterations(step: Callable[[], Any], synchronize: Callable[[], None],
                    warmup: int, iters: int) -> np.ndarray:
    """Run `step` warmup + iters times; return the latency of each timed iteration in ms."""
    for _ in range(warmup):
        step()
    synchronize()
    latencies = np.empty(iters, np.float64)
    for i in range(iters):
        start = time.perf_counter()
        step()
        synchronize()
        latencies[i] = (time.perf_counter() - start) * 1e3
    return latencies


def latency_summary(latencies_ms: np.ndarray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(latencies_ms.mean())}


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
