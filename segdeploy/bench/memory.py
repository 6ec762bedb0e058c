"""Memory figures of a benchmark cell: the process's peak RSS on a CPU, device memory on a GPU."""

from __future__ import annotations

import threading


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
    used memory minus the idle baseline read before this process touched CUDA (other processes' changes
    included), else `torch.cuda.mem_get_info` (device-wide used memory: other processes and the baseline
    included). `kind` names which, in those words (KINDS). Polling runs in a thread only while `start`ed
    (warm-up), never during the timed iterations; `sample()` adds single readings (e.g. after the timed loop).
    """

    KINDS = {"nvml_process": "device_nvml_process",
             "nvml_device": "device_nvml_minus_idle_baseline_incl_other_processes",
             "mem_get_info": "device_used_incl_other_processes_and_baseline"}

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
                        self.kind = self.KINDS["nvml_process"]
                        return int(proc.usedGpuMemory)
                used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used
                self.kind = self.KINDS["nvml_device"]
                return int(used - self._baseline)
            except Exception:  # noqa: BLE001
                pass
        try:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_initialized():
                free, total = torch.cuda.mem_get_info(self.device_index)
                self.kind = self.KINDS["mem_get_info"]
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
