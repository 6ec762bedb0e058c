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


# --- the timed loop's stopping rule: the median's order-statistic interval (bench/timing.py) ---

from segdeploy.bench.timing import (CONVERGED, ITERATION_CAP, TIME_BUDGET, StopPolicy,  # noqa: E402
                                    median_and_interval, median_ci_ranks, relative_half_width, stop_reason,
                                    time_until_sure)


def test_median_ci_ranks_are_the_widest_95_percent_binomial_ranks():
    from scipy.stats import binom

    for n in [*range(1, 120), 999, 5000]:
        ranks = median_ci_ranks(n)
        if n < 6:  # 2 * 0.5**5 = 6.25% > 5%: no pair of order statistics covers 95% with 5 samples
            assert ranks is None, n
            continue
        low, high = ranks
        assert high == n - 1 - low  # symmetric: x_(j) and x_(n+1-j)
        coverage = 1 - 2 * binom.cdf(low, n, 0.5)  # P(x_(j) <= median <= x_(n+1-j)), j = low + 1
        narrower = 1 - 2 * binom.cdf(low + 1, n, 0.5)
        assert coverage >= 0.95 > narrower, (n, ranks, coverage, narrower)
    assert median_ci_ranks(20) == (5, 14) and median_ci_ranks(19) == (4, 14)  # P(B<=5 | 20) = 0.0207


def test_median_interval_is_order_statistics_and_covers_the_true_median():
    rng = np.random.default_rng(7)
    sample = rng.lognormal(0.0, 0.5, size=41)
    p50, (low, high) = median_and_interval(sample)
    ordered = np.sort(sample)
    low_rank, high_rank = median_ci_ranks(41)
    assert p50 == float(np.median(sample)) and (low, high) == (ordered[low_rank], ordered[high_rank])
    assert median_and_interval(sample[:5]) == (float(np.median(sample[:5])), None)
    assert relative_half_width(sample[:5]) == float("inf")
    # distribution-free: ~95% (at least) coverage of the true median ln 2 of a skewed distribution
    trials = rng.exponential(1.0, size=(2000, 30))
    covered = [lo <= np.log(2) <= hi for lo, hi in (median_and_interval(t)[1] for t in trials)]
    from scipy.stats import binom

    exact = 1 - 2 * binom.cdf(median_ci_ranks(30)[0], 30, 0.5)
    assert abs(np.mean(covered) - exact) < 0.015, (np.mean(covered), exact)


def test_stop_reason_on_synthetic_sequences():
    policy = StopPolicy(rel_ci=0.02, max_time_s=10.0, min_iters=10)
    steady = [100.0, 100.5, 99.5] * 4
    assert stop_reason(steady[:9], 0.5, policy) is None  # fewer than min_iters, even if tight
    assert stop_reason(steady[:10], 0.5, policy) == CONVERGED  # half-width 0.5 / 100 <= 2%
    noisy = [100.0, 150.0] * 10
    assert stop_reason(noisy, 9.9, policy) is None
    assert stop_reason(noisy, 10.0, policy) == TIME_BUDGET
    assert stop_reason(noisy[:5], 60.0, policy) is None  # the minimum comes first
    capped = StopPolicy(rel_ci=0.02, max_time_s=10.0, min_iters=10, max_iters=4)
    assert stop_reason(noisy[:3], 0.1, capped) is None
    assert stop_reason(noisy[:4], 0.1, capped) == ITERATION_CAP  # the cap lowers the minimum
    assert stop_reason(steady, 0.1, StopPolicy(min_iters=10, max_iters=12)) == CONVERGED  # rather than the cap


class FakeClock:
    """Seconds that advance only when the scripted timer 'runs' an iteration."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class ClockedScript(ScriptedTimer):
    def __init__(self, values, clock: FakeClock):
        super().__init__(values)
        self.clock = clock

    def measure(self, step, synchronize):
        value = super().measure(step, synchronize)
        self.clock.now += value / 1e3
        return value


def test_time_until_sure_stops_when_the_interval_is_tight():
    clock = FakeClock()
    # 5 slow iterations among the first 10, then steady: the interval's upper rank x_(n+1-j) leaves the slow
    # ones only once j >= 6, i.e. at n = 20 (j = 5 at n = 19)
    script = [100.0, 130.0] * 5 + [100.0] * 100
    timer = ClockedScript(script, clock)
    result = time_until_sure(lambda: None, lambda: None, timer, StopPolicy(0.02, 60.0, 10), clock)
    assert result.stop_reason == CONVERGED and len(result.latencies_ms) == 20 == timer.calls
    assert result.timed_s == pytest.approx((5 * 130 + 15 * 100) / 1e3)
    row = result.row()
    assert row["p50_ci_ms"] == [100.0, 100.0] and row["p50_ci_rel"] == 0.0 and row["iterations"] == 20


def test_time_until_sure_stops_at_the_time_budget_and_the_cap():
    clock = FakeClock()
    timer = ClockedScript([250.0, 500.0] * 50, clock)  # never within 2%; elapsed 0.25, 0.75, 1.0, 1.5, 1.75, 2.25
    result = time_until_sure(lambda: None, lambda: None, timer, StopPolicy(0.02, 2.0, 3), clock)
    assert result.stop_reason == TIME_BUDGET and len(result.latencies_ms) == 6
    assert result.row()["p50_ci_ms"] == [250.0, 500.0]
    timer = ClockedScript([250.0, 500.0] * 50, clock)
    result = time_until_sure(lambda: None, lambda: None, timer, StopPolicy(0.02, 2.0, 10, max_iters=4), clock)
    assert result.stop_reason == ITERATION_CAP and len(result.latencies_ms) == 4
    assert result.row()["p50_ci_ms"] is None and result.row()["p50_ci_rel"] is None  # 4 samples: no interval


def test_interval_is_checked_a_logarithmic_number_of_times():
    clock = FakeClock()
    timer = ClockedScript([1.0, 2.0] * 1000, clock)
    result = time_until_sure(lambda: None, lambda: None, timer, StopPolicy(0.02, 1e9, 10, max_iters=2000), clock)
    assert result.stop_reason == ITERATION_CAP and len(result.latencies_ms) == 2000
    # every iteration from 10 to 40, then each time the count grew by 5%: 117 checks, not 2000
    assert 80 < result.checks < 150, result.checks
