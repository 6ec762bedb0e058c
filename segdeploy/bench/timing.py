"""All timing in one place: the clock is read only after the device has finished the work.

On CPU a `HostTimer` reads `time.perf_counter` after the runner's `synchronize()`. On a CUDA device a
`CudaEventTimer` records CUDA events around the timed region and waits for the end event before
reading the elapsed time. Warm-up runs a minimum number of iterations, then continues window by window
until the median latency of the last window is within a tolerance of the window before it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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
