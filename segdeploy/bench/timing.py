"""All timing in one place: the clock is read only after the device has finished the work.

On CPU a `HostTimer` reads `time.perf_counter` after the runner's `synchronize()`. On a CUDA device a
`CudaEventTimer` records CUDA events around the timed region and waits for the end event before
reading the elapsed time. Warm-up runs a minimum number of iterations, then continues window by window
until the median latency of the last window is within a tolerance of the window before it.

The timed loop (`time_until_sure`) then runs until the median is known well enough (`StopPolicy`): the
95% confidence interval of the median is the distribution-free order-statistic (binomial) interval
[x_(j), x_(n+1-j)] of the n sorted latencies, with j the largest rank such that
P(B <= j - 1) <= (1 - 0.95) / 2 for B ~ Binomial(n, 1/2): the median lies below x_(j) only if at most
j - 1 samples fall below it, so the interval covers the true median with probability
1 - 2 P(B <= j - 1) >= 95% whatever the latency distribution (continuous; n >= 6, below that no 95%
interval exists). It is exact, deterministic and costs one partial sort. The loop stops `converged` once
max(p50 - lo, hi - p50) <= rel_ci * p50 after at least `min_iters`, or at the `time budget` (timed
seconds, never before `min_iters`), or at the `iteration cap` (`--iters`, optional). The interval is
checked outside the timed region, after `min_iters` and then whenever the count has grown by 5%
(so at most ~5% more iterations than needed, and the checks cost O(n) in all).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np

Step = Callable[[], Any]
Sync = Callable[[], None]


class HostTimer:
    """Host clock around step + synchronize: the clock is read only once the device is idle."""

    kind = "host_clock_after_sync"

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock

    def measure(self, step: Step, synchronize: Sync) -> float:
        start = self.clock()
        step()
        synchronize()
        return (self.clock() - start) * 1e3


class CudaEventTimer:
    """CUDA events recorded on the current stream around the timed region, in milliseconds.

    `stream_ordered` runners enqueue all their work on torch's current stream, so the end event is
    recorded straight after the step. Other runners (ONNX Runtime on its own stream, a TensorRT
    runner with its own stream) are synchronised first, so the end event cannot fire early.
    """

    kind = "cuda_events"

    def __init__(self, device: str = "cuda", stream_ordered: bool = False):
        import torch

        self.torch = torch
        self.device = device
        self.stream_ordered = stream_ordered
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def measure(self, step: Step, synchronize: Sync) -> float:
        synchronize()  # nothing of an earlier iteration may run inside this one
        self.start.record()
        step()
        if not self.stream_ordered:
            synchronize()
        self.end.record()
        self.end.synchronize()
        return float(self.start.elapsed_time(self.end))


def make_timer(device: str, stream_ordered: bool = False) -> HostTimer | CudaEventTimer:
    if device.startswith("cuda"):
        return CudaEventTimer(device, stream_ordered)
    return HostTimer()


@dataclass
class WarmupPolicy:
    """Run at least `min_iters`; then windows of `window` iterations until the median of the last
    window is within `rtol` of the previous window's median, or `max_iters` in all."""

    min_iters: int = 10
    window: int = 5
    rtol: float = 0.05
    max_iters: int = 200


@dataclass
class WarmupResult:
    iterations: int
    stable: bool
    last_window_median_ms: float | None


def warm_up(step: Step, synchronize: Sync, timer: HostTimer | CudaEventTimer,
            policy: WarmupPolicy) -> WarmupResult:
    """Untimed-for-the-report iterations until the latency has settled (see WarmupPolicy)."""
    latencies: list[float] = []
    for _ in range(policy.min_iters):
        latencies.append(timer.measure(step, synchronize))
    window = max(1, policy.window)
    while True:
        if len(latencies) >= 2 * window:
            last = float(np.median(latencies[-window:]))
            previous = float(np.median(latencies[-2 * window:-window]))
            if abs(last - previous) <= policy.rtol * previous:
                return WarmupResult(len(latencies), True, last)
        if len(latencies) + window > max(policy.max_iters, policy.min_iters):
            last = float(np.median(latencies[-window:])) if latencies else None
            return WarmupResult(len(latencies), False, last)
        for _ in range(window):
            latencies.append(timer.measure(step, synchronize))


def time_iterations(step: Step, synchronize: Sync, warmup: int, iters: int,
                    timer: HostTimer | CudaEventTimer | None = None) -> np.ndarray:
    """Run `step` warmup + iters times; return the latency of each timed iteration in ms."""
    timer = timer or HostTimer()
    for _ in range(warmup):
        step()
    synchronize()
    latencies = np.empty(iters, np.float64)
    for i in range(iters):
        latencies[i] = timer.measure(step, synchronize)
    return latencies


def latency_summary(latencies_ms: np.ndarray) -> dict[str, float]:
    """p50/p90/p99 (linear interpolation, numpy's default), mean, min, max and std in ms."""
    latencies_ms = np.asarray(latencies_ms, np.float64)
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(latencies_ms.mean()),
            "min": float(latencies_ms.min()), "max": float(latencies_ms.max()),
            "std": float(latencies_ms.std())}


def throughput_ips(batch_size: int, latencies_ms: np.ndarray) -> float:
    """Images per second over the timed iterations (total images / total time)."""
    return batch_size * len(latencies_ms) * 1e3 / float(np.sum(latencies_ms))


CONVERGED, TIME_BUDGET, ITERATION_CAP = "converged", "time budget", "iteration cap"
CI_METHOD = "order-statistic (distribution-free binomial) interval of the median"


@dataclass
class StopPolicy:
    """When the timed loop ends (see the module docstring): the median's `confidence` interval within
    `rel_ci` of the median, or `max_time_s` of timing, never before `min_iters`; `max_iters` is a hard cap
    (None: none) that also lowers `min_iters` to itself."""

    rel_ci: float = 0.02
    max_time_s: float = 10.0
    min_iters: int = 10
    max_iters: int | None = None
    confidence: float = 0.95


@lru_cache(maxsize=4096)
def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int] | None:
    """0-based indices (j - 1, n - j) into the sorted sample of the order-statistic interval of the median,
    or None when n samples are too few for that confidence (n < 6 at 95%)."""
    tail = (1.0 - confidence) / 2
    log_pmf = -n * math.log(2.0)  # P(B = 0) for B ~ Binomial(n, 1/2), in logs: no underflow at large n
    cdf, j = 0.0, 0
    while j <= n // 2:
        cdf += math.exp(log_pmf)  # now P(B <= j)
        if cdf > tail:
            break
        log_pmf += math.log((n - j) / (j + 1))
        j += 1
    return None if j == 0 else (j - 1, n - j)


def median_and_interval(latencies_ms, confidence: float = 0.95) -> tuple[float, tuple[float, float] | None]:
    """The median (numpy's) and its order-statistic confidence interval (lo, hi) in ms, from one partial
    sort; the interval is None with too few samples."""
    values = np.asarray(latencies_ms, np.float64)
    count = len(values)
    middle = ((count - 1) // 2, count // 2)
    ranks = median_ci_ranks(count, confidence)
    ordered = np.partition(values, sorted({*middle, *(ranks or ())}))
    p50 = float((ordered[middle[0]] + ordered[middle[1]]) / 2)
    return p50, None if ranks is None else (float(ordered[ranks[0]]), float(ordered[ranks[1]]))


def relative_half_width(latencies_ms, confidence: float = 0.95) -> float:
    """The larger side of the median's interval over the median (inf with too few samples): `p50 +- ci`."""
    p50, interval = median_and_interval(latencies_ms, confidence)
    if interval is None or p50 <= 0:
        return math.inf
    return max(p50 - interval[0], interval[1] - p50) / p50


def stop_reason(latencies_ms, elapsed_s: float, policy: StopPolicy) -> str | None:
    """Why the timed loop should stop after these latencies and `elapsed_s` timed seconds, or None."""
    count = len(latencies_ms)
    cap = policy.max_iters
    if count < min(policy.min_iters, cap or policy.min_iters):
        return None
    if relative_half_width(latencies_ms, policy.confidence) <= policy.rel_ci:
        return CONVERGED
    if cap is not None and count >= cap:
        return ITERATION_CAP
    return TIME_BUDGET if elapsed_s >= policy.max_time_s else None


@dataclass
class TimedResult:
    latencies_ms: np.ndarray
    stop_reason: str
    timed_s: float
    checks: int

    def row(self, confidence: float = 0.95) -> dict:
        """What a bench row records beyond the latency summary."""
        p50, interval = median_and_interval(self.latencies_ms, confidence)
        return {"p50_ci_ms": list(interval) if interval else None,
                "p50_ci_rel": max(p50 - interval[0], interval[1] - p50) / p50 if interval and p50 > 0 else None,
                "stop_reason": self.stop_reason, "iterations": int(len(self.latencies_ms)),
                "timed_s": self.timed_s}


def time_until_sure(step: Step, synchronize: Sync, timer: HostTimer | CudaEventTimer, policy: StopPolicy,
                    clock: Callable[[], float] = time.perf_counter) -> TimedResult:
    """Time `step` until `stop_reason` says so; the interval is checked between timed iterations, after
    the minimum and then each time the count has grown by 5% (at once at the cap)."""
    latencies: list[float] = []
    cap = policy.max_iters
    next_check = max(1, min(policy.min_iters, cap or policy.min_iters))
    checks = 0
    started = clock()
    while True:
        latencies.append(timer.measure(step, synchronize))
        count = len(latencies)
        if count >= next_check or count == cap:
            checks += 1
            reason = stop_reason(latencies, clock() - started, policy)
            if reason is not None:
                return TimedResult(np.asarray(latencies, np.float64), reason, clock() - started, checks)
            next_check = count + max(1, count // 20)
