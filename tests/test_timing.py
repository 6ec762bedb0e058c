"""segdeploy.bench.timing: the clock is read after the device is done; percentiles; warm-up; memory."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from segdeploy.bench.timing import HostTimer, WarmupPolicy, latency_summary, throughput_ips, time_iterations, warm_up


class FakeAsyncDevice:
    """A device whose work runs on a worker thread: `launch` returns at once, `synchronize` waits."""

    def __init__(self, work_s: float):
        self.work_s = work_s
        self.pending: queue.Queue = queue.Queue()
        self.done = 0
        threading.Thread(target=self._worker, daemon=True).start()

    def _worker(self):
        while True:
            self.pending.get()
            time.sleep(self.work_s)
            self.done += 1
            self.pending.task_done()

    def launch(self):
        self.pending.put(object())

    def synchronize(self):
        self.pending.join()


def test_time_iterations_waits_for_asynchronous_work():
    device = FakeAsyncDevice(work_s=0.05)
    latencies = time_iterations(device.launch, device.synchronize, warmup=1, iters=4)
    assert device.done == 5
    assert latencies.shape == (4,)
    assert (latencies >= 50.0).all(), latencies


def test_fake_device_is_really_asynchronous():
    """Without synchronising, the same loop would time only the launch: the test above can fail."""
    device = FakeAsyncDevice(work_s=0.05)
    latencies = time_iterations(device.launch, lambda: None, warmup=0, iters=3)
    assert (latencies < 50.0).all(), latencies
    device.synchronize()


def test_host_timer_reads_clock_only_around_step_and_synchronize():
    log = []
    clock_values = iter([1.0, 1.25])

    def clock():
        log.append("clock")
        return next(clock_values)

    elapsed = HostTimer(clock).measure(lambda: log.append("step"), lambda: log.append("sync"))
    assert log == ["clock", "step", "sync", "clock"]
    assert elapsed == pytest.approx(250.0)


def test_latency_summary_matches_numpy_and_hand_values():
    samples = np.arange(1, 101, dtype=np.float64)[::-1].copy()  # order must not matter
    summary = latency_summary(samples)
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p90"] == pytest.approx(90.1)
    assert summary["p99"] == pytest.approx(99.01)
    assert summary["mean"] == pytest.approx(50.5)
    rng = np.random.default_rng(1)
    skewed = rng.lognormal(1.0, 0.7, size=257)
    summary = latency_summary(skewed)
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert summary[key] == pytest.approx(float(np.percentile(skewed, q)))
    assert summary["min"] == skewed.min() and summary["max"] == skewed.max()


def test_throughput_is_images_over_total_time():
    assert throughput_ips(4, np.array([10.0, 20.0, 30.0])) == pytest.approx(12 / 0.06)


class ScriptedTimer:
    """Returns latencies from a script, calling step and synchronize like a real timer."""

    kind = "scripted"

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def measure(self, step, synchronize):
        step()
        synchronize()
        self.calls += 1
        return self.values.pop(0)


def test_warm_up_runs_until_the_last_window_median_is_stable():
    script = [200, 150, 120, 100, 80, 60, 50, 50, 50, 49, 50, 51] + [50] * 20
    timer = ScriptedTimer(script)
    result = warm_up(lambda: None, lambda: None, timer, WarmupPolicy(min_iters=4, window=3, rtol=0.05, max_iters=50))
    # min 4, window 3: 4 samples are too few to compare two windows, so one window more
    # 7 samples: last=[80,60,50] median 60, prev=[150,120,100] median 120 -> no
    # 10 samples: last=[50,50,49] median 50, prev=[80,60,50] median 60 -> |50-60|/60 = 0.17 -> no
    # 13 samples: last=[50,51,50] median 50, prev=[50,50,49] median 50 -> stable
    assert result.stable and result.iterations == 13 == timer.calls
    assert result.last_window_median_ms == 50


def test_warm_up_gives_up_at_max_iters_and_says_so():
    timer = ScriptedTimer([float(v) for v in range(100, 400, 10)])  # keeps drifting by > 5% per window
    result = warm_up(lambda: None, lambda: None, timer, WarmupPolicy(min_iters=2, window=2, rtol=0.01, max_iters=10))
    assert not result.stable
    assert result.iterations == 10 == timer.calls


def test_warm_up_with_fixed_count_when_max_equals_min():
    timer = ScriptedTimer([5.0] * 20)
    result = warm_up(lambda: None, lambda: None, timer, WarmupPolicy(min_iters=5, window=5, rtol=0.05, max_iters=5))
    assert result.iterations == 5


def test_peak_rss_sees_a_new_allocation():
    # a fresh process: in this one, malloc may hand back memory that earlier tests freed but kept resident
    code = ("import numpy as np; from segdeploy.bench.memory import current_rss_mb, peak_rss_mb; "
            "before = current_rss_mb(); block = np.ones(96 * 2**20 // 8); after = current_rss_mb(); "
            "del block; print(after - before, peak_rss_mb() - before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    grown, peak_grown = map(float, out.stdout.split())
    assert grown >= 90 and peak_grown >= 90  # the peak outlives the freed block


@pytest.mark.gpu
def test_cuda_event_timer_measures_device_work():
    import torch

    from segdeploy.bench.timing import CudaEventTimer

    a = torch.randn(4096, 4096, device="cuda")
    timer = CudaEventTimer("cuda", stream_ordered=True)
    for _ in range(3):  # cuBLAS initialises on the first matmul (measured 106 ms on an H100 without this)
        timer.measure(lambda: a @ a, torch.cuda.synchronize)
    one = timer.measure(lambda: a @ a, torch.cuda.synchronize)
    four = timer.measure(lambda: [a @ a for _ in range(4)], torch.cuda.synchronize)
    assert one > 0 and four > 2.5 * one
