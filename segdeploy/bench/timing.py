"""All timing in one place: the clock is read only after the device has finished the work.

On CPU a `HostTimer` reads `time.perf_counter` after the runner's `synchronize()`. On a CUDA device a
`CudaEventTimer` records CUDA events around the timed region and waits for the end event before
reading the elapsed time. Warm-up runs a minimum number of iterations, then continues window by window
until the median latency of the last window is within a tolerance of the window before it.
"""

from __future__ import annotations

import threading
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


def peak_rss_mb() -> float:
    """Peak resident set size of this process image in MiB.

    /proc/self/status VmHWM first: getrusage's ru_maxrss survives fork + exec, so in a freshly spawned
    benchmark cell it would report the parent's peak whenever that was larger.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class DeviceMemorySampler:
    """Peak device memory seen by polling, including the CUDA context.

    NVML per process (this pid's `usedGpuMemory`) when it can see this process, else NVML device-wide
    used memory minus the baseline read before this process touched CUDA, else
    `torch.cuda.mem_get_info` (device-wide: includes other processes). Polling runs in a thread
    only while `sampling()` is active (warm-up), never during the timed iterations; `sample()` adds
    single readings (e.g. right after the timed loop).
    """

    def __init__(self, device_index: int = 0, interval_s: float = 0.01):
        self.device_index = device_index
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.kind = "unavailable"
        self._baseline = 0
        self._nvml = None
        self._handle = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            self._baseline = pynvml.nvmlDeviceGetMemoryInfo(self._handle).used
        except Exception:  # noqa: BLE001 - no NVML (not installed, no driver): fall back to torch
            self._nvml = None

    def _read(self) -> int | None:
        if self._nvml is not None:
            import os

            try:
                for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                    if proc.pid == os.getpid() and proc.usedGpuMemory:
                        self.kind = "device_nvml_process"
                        return int(proc.usedGpuMemory)
                used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used
                self.kind = "device_nvml_minus_baseline"
                return int(used - self._baseline)
            except Exception:  # noqa: BLE001
                pass
        try:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                free, total = torch.cuda.mem_get_info(self.device_index)
                self.kind = "device_mem_get_info_all_processes"
                return int(total - free)
        except Exception:  # noqa: BLE001
            pass
        return None

    def sample(self) -> None:
        value = self._read()
        if value is not None:
            self.peak_bytes = max(self.peak_bytes, value)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> None:
        self._stop.clear()
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample()

    @property
    def peak_mb(self) -> float | None:
        return self.peak_bytes / 2**20 if self.peak_bytes else None
