"""segdeploy bench: variants, the subprocess-per-cell protocol, OOM and dead children, schema, reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from segdeploy.core import fileio
from segdeploy.bench.sweep import model_flops, parse_batch_sizes, run_bench
from segdeploy.bench.cell import cell_input, cell_spec, run_cell_subprocess
from segdeploy.core.config import BenchConfig
from segdeploy.runtime.base import Runner
from segdeploy.runtime.variants import (BACKENDS, BackendSpec, RuntimeContext, Variant, build_runner,
                                        expand_backends, parse_variant)
from segdeploy.cli import app
from segdeploy.core.errors import ConfigError
from segdeploy.core.rundir import RunDir
from segdeploy.bench.memory import current_rss_mb
from segdeploy.bench.timing import WarmupPolicy

ROW_KEYS = {"backend", "variant", "precision", "device", "batch_size", "status", "latency_ms", "throughput_ips",
            "peak_memory_mb", "memory_kind", "tflops"}
FAST = dict(warmup=1, iters=3, warmup_window=2, max_warmup=3, threads=2, device="cpu")


def bench_config(backends, batch_sizes, **settings) -> BenchConfig:
    return BenchConfig(backends=list(backends), batch_sizes=batch_sizes, **{**FAST, **settings})

PLUGIN = textwrap.dedent('''
    """Test doubles for the bench sweep: a backend that kills its own process, one that runs out of memory."""
    import os
    import signal
    import time

    import numpy as np

    from segdeploy.runtime.variants import BACKENDS, BackendSpec
    from segdeploy.runtime.base import Runner


    class DyingRunner(Runner):
        name = "fake-die"

        def run(self, prepared):
            os.kill(os.getpid(), signal.SIGKILL)


    class HangingRunner(Runner):
        name = "fake-hang"

        def run(self, prepared):
            time.sleep(600)


    class OomRunner(Runner):
        """Real work (a reduction over the batch) that 'runs out of memory' from batch 4 on."""
        name = "fake-oom"

        def run(self, prepared):
            if prepared.shape[0] >= 4:
                import torch
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return prepared.sum(axis=(1, 2, 3))


    for name, runner in (("fake-die", DyingRunner), ("fake-hang", HangingRunner), ("fake-oom", OomRunner)):
        BACKENDS[name] = BackendSpec(build=lambda variant, ctx, runner=runner: runner(variant.precision, ctx.device),
                                     description="test double", reads_graph=False)
''')


@pytest.fixture
def bench_run(trained_run, tmp_path) -> RunDir:
    """A private view of the shared trained run (bench writes into its run directory)."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run.config_path, run / "config.toml")
    (run / "checkpoints").symlink_to(trained_run.checkpoints.resolve())
    (run / "export").symlink_to(trained_run.export_dir.resolve())
    return RunDir(run)


@pytest.fixture
def plugin(tmp_path) -> Path:
    path = tmp_path / "fake_backends.py"
    path.write_text(PLUGIN)
    return path


def test_parse_variant_names_and_errors():
    assert parse_variant("torch") == Variant("torch")
    v = parse_variant("torch+cl+graph+fp16")  # canonical order: the backend's declaration order
    assert (v.precision, v.option("channels_last"), v.option("cuda_graph"), v.name) == (
        "fp16", True, True, "torch+fp16+cl+graph")
    assert parse_variant("torch+channels_last").name == "torch+cl"
    assert parse_variant("torch+compile").option("compile") == "default"
    assert parse_variant("torch+bf16+compile=reduce-overhead").option("compile") == "reduce-overhead"
    trt_ep = parse_variant("onnxruntime+trt", precision="fp16")
    assert (trt_ep.option("provider"), trt_ep.graph, trt_ep.precision) == ("trt", "fp16", "fp16")
    assert parse_variant("torch", precision="int8").graph is None  # torch runs the checkpoint, not a graph
    with pytest.raises(ConfigError, match="unknown modifier 'fp8' for torch"):
        parse_variant("torch+fp8")
    with pytest.raises(ConfigError, match="unknown backend 'tensorflow'"):
        parse_variant("tensorflow")
    with pytest.raises(ConfigError, match="reduce-overhead"):
        parse_variant("torch+compile+graph")
    with pytest.raises(ConfigError, match="sets autocast twice"):
        parse_variant("torch+fp16+bf16")


def test_presets_expand_per_device_and_graph_backends_per_precision():
    cpu = [v.name for v in expand_backends(["torch-all", "onnxruntime"], "cpu", ["fp32"])]
    assert cpu == ["torch", "torch+cl", "torch+bf16", "torch+bf16+cl", "onnxruntime"]
    gpu = expand_backends(["torch-all", "ort-all"], "cuda", ["fp32", "fp16"])
    names = [(v.name, v.precision) for v in gpu]
    assert ("torch+fp16+cl+graph", "fp16") in names and ("onnxruntime+trt", "fp16") in names
    assert sum(1 for n, _ in names if n == "torch") == 1  # torch's precision is a modifier, not --precision


def test_parse_batch_sizes():
    assert parse_batch_sizes("1, 2,4") == [1, 2, 4]
    assert parse_batch_sizes("auto") == "auto"
    with pytest.raises(ConfigError):
        parse_batch_sizes("1,0")
    with pytest.raises(ConfigError):
        parse_batch_sizes("one")


def test_torch_variants_compute_the_same_logits(bench_run):
    ctx = RuntimeContext(bench_run, "cpu", 2)
    images = cell_input(2, 64, seed=3)
    with build_runner(parse_variant("torch"), ctx) as eager_runner:
        eager = eager_runner.infer(images)
    with build_runner(parse_variant("torch+cl"), ctx) as channels_last:
        assert channels_last.prepare(images).is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_allclose(channels_last.infer(images), eager, atol=1e-4, rtol=1e-4)
    with build_runner(parse_variant("onnxruntime"), ctx) as ort:
        np.testing.assert_allclose(ort.infer(images), eager, atol=1e-3, rtol=1e-3)


def test_in_process_sweep_rows_and_unavailable_variants(bench_run):
    report = run_bench(bench_run, bench_config(["torch", "torch+cl", "onnxruntime", "torch+fp16", "onnxruntime+cuda",
                                                "tensorrt"], [2], isolate=False, max_images=4), write_reports=False)
    rows = {(r["variant"], r["batch_size"]): r for r in report["results"]}
    assert report["environment"]["openvino_capabilities"] is None  # no openvino variant: OpenVINO not probed
    assert len(rows) == 6
    flops = report["model"]["flops_per_image"]
    assert flops and flops > 1e8  # a U-Net R18 at 64x64 is ~0.6 GFLOP
    for name in ("torch", "torch+cl", "onnxruntime"):
        for b in (2,):
            row = rows[(name, b)]
            assert ROW_KEYS <= row.keys()
            assert row["status"] == "ok", row["status"]
            lat = row["latency_ms"]
            assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
            assert row["iterations"] == 3 and row["timer"] == "host_clock_after_sync"
            assert row["throughput_ips"] == pytest.approx(b * 1e3 / lat["mean"])
            assert row["tflops"] == pytest.approx(flops * row["throughput_ips"] / 1e12)
            assert row["memory_kind"] == "process_peak_rss" and row["peak_memory_mb"] > 0
    for name, reason in (("torch+fp16", "needs a CUDA device"), ("onnxruntime+cuda", "needs --device cuda"),
                         ("tensorrt", "TensorRT")):
        assert rows[(name, 2)]["status"].startswith("unavailable: ") and reason in rows[(name, 2)]["status"]
        assert rows[(name, 2)]["latency_ms"] is None and rows[(name, 2)]["miou"] is None
    # accuracy of the same runners on 4 validation images: the reference and two variants that agree with it
    assert {a["variant"]: a["source"] for a in report["accuracy"]} == {
        "torch+cl": "measured", "onnxruntime": "measured", "torch": "reference"}
    for name in ("torch", "torch+cl", "onnxruntime"):
        assert rows[(name, 2)]["argmax_agreement"] > 0.99 and 0 < rows[(name, 2)]["miou"] <= 1
    assert rows[("torch+cl", 2)]["miou"] == pytest.approx(rows[("torch", 2)]["miou"], abs=0.01)


def test_flop_count_matches_a_hand_count_for_a_conv():
    from torch.utils.flop_counter import FlopCounterMode

    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    counter = FlopCounterMode(display=False)
    with counter:
        conv(torch.zeros(1, 3, 16, 16))
    assert counter.get_total_flops() == 2 * 3 * 8 * 9 * 16 * 16


def test_model_flops_scales_with_input_area(bench_run):
    small, large = model_flops(bench_run, 64), model_flops(bench_run, 128)
    assert large == pytest.approx(4 * small, rel=0.01)


def test_subprocess_cell_returns_its_own_result_and_memory(bench_run):
    spec = cell_spec(parse_variant("onnxruntime"), bench_run.path, bench_config([], [2], iters=4), 2, 64,
                     WarmupPolicy(1, 2, 0.05, 3), keep_latencies=True)
    row = run_cell_subprocess(spec, timeout_s=300)
    assert row["status"] == "ok", row["status"]
    assert len(row["latencies_ms"]) == 4
    assert row["latency_ms"]["p50"] == pytest.approx(float(np.median(row["latencies_ms"])))
    assert row["memory_kind"] == "process_peak_rss"
    # the child's own peak (VmHWM), not the parent's: this test process holds torch and models
    assert 0 < row["peak_memory_mb"] < current_rss_mb()


def test_sweep_survives_a_dying_and_a_hanging_child(bench_run, plugin):
    report = run_bench(bench_run, bench_config(["fake-die", "fake-hang", "onnxruntime"], [1], plugins=[str(plugin)],
                                               cell_timeout_s=12, accuracy=False), write_reports=False)
    by_variant = {r["variant"]: r for r in report["results"]}
    assert by_variant["fake-die"]["status"].startswith("failed: child process killed by SIGKILL")
    assert by_variant["fake-hang"]["status"].startswith("failed: child process timed out")
    assert by_variant["onnxruntime"]["status"] == "ok"
    assert by_variant["onnxruntime"]["isolated"] is True


def test_oom_is_recorded_and_the_sweep_goes_on(bench_run, plugin):
    report = run_bench(bench_run, bench_config(["fake-oom", "onnxruntime"], [4, 2], isolate=False,
                                               plugins=[str(plugin)], accuracy=False), write_reports=False)
    statuses = [(r["variant"], r["batch_size"], r["status"]) for r in report["results"]]
    assert statuses == [("fake-oom", 4, "oom"), ("fake-oom", 2, "ok"), ("onnxruntime", 4, "ok"),
                        ("onnxruntime", 2, "ok")]


def test_auto_batch_sizes_double_until_the_first_oom(bench_run, plugin):
    report = run_bench(bench_run, bench_config(["fake-oom"], "auto", isolate=False, plugins=[str(plugin)],
                                               accuracy=False), write_reports=False)
    assert [(r["batch_size"], r["status"]) for r in report["results"]] == [(1, "ok"), (2, "ok"), (4, "oom")]
    assert report["settings"]["batch_sizes"] == "auto"


def test_cli_bench_writes_json_markdown_and_plots(bench_run):
    from segdeploy.evaluation.parity import run_parity

    from segdeploy.core.config import ParityConfig

    run_parity(bench_run, ParityConfig(["onnxruntime"], max_images=4, threads=2))
    result = CliRunner().invoke(app, ["bench", str(bench_run.path), "--batch-sizes", "1,2,4", "--iters", "3",
                                      "--warmup", "1", "--warmup-window", "2", "--max-warmup", "3",
                                      "--threads", "2", "--in-process", "--max-images", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = fileio.read_json(bench_run.bench)
    assert set(report) >= {"environment", "results", "model", "settings", "input_size", "accuracy"}
    env = report["environment"]
    for key in ("cpu", "cpu_count", "torch_threads", "packages", "segdeploy", "git_commit", "python"):
        assert key in env
    assert env["packages"]["torch"] and env["packages"]["onnxruntime"]
    assert [(r["variant"], r["batch_size"]) for r in report["results"]] == [
        (b, n) for b in ("torch", "onnxruntime") for n in (1, 2, 4)]
    json.dumps(report)  # plain JSON types only
    md = (bench_run.path / "bench.md").read_text()
    assert "| variant | precision | batch |" in md and "| onnxruntime | fp32 | 4 | ok |" in md
    from segdeploy.core.env import effective_cpu_isa

    assert env["effective_cpu_isa"] == effective_cpu_isa() and f"- CPU ISA: {env['effective_cpu_isa']}" in md
    # one summary row per variant, accuracy next to latency: onnxruntime's reused from parity.json
    sources = {a["variant"]: a["source"] for a in report["accuracy"]}
    assert sources == {"onnxruntime": "parity.json", "torch": "reference"}
    parity = fileio.read_json(bench_run.parity)["results"][0]
    summary = next(line for line in md.splitlines() if line.startswith("| onnxruntime | fp32 | ok |"))
    assert f"| {100 * parity['miou']:.2f} | {100 * parity['argmax_agreement']:.3f} |" in summary
    assert "validation images, measured with the same runner" in md
    for name in ("latency_vs_batch.png", "throughput_vs_batch.png", "accuracy_vs_latency.png"):
        data = (bench_run.path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


def test_bench_measures_accuracy_again_when_parity_ran_under_another_isa_cap(bench_run):
    """parity.json from a process under ONEDNN_MAX_CPU_ISA=AVX2 (other INT8 kernels on the same CPU) is not
    this process's accuracy: bench measures it here instead of printing it next to native latencies."""
    capped = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2"}
    parity = subprocess.run([sys.executable, "-m", "segdeploy", "parity", str(bench_run.path), "--backends",
                             "onnxruntime", "--max-images", "4", "--threads", "2", "--device", "cpu"],
                            capture_output=True, text=True, timeout=300, env=capped)
    assert parity.returncode == 0, parity.stdout[-2000:] + parity.stderr[-2000:]
    assert fileio.read_json(bench_run.parity)["environment"]["isa_caps"] == {
        "ONEDNN_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2"}
    result = CliRunner().invoke(app, ["bench", str(bench_run.path), "--backends", "onnxruntime", "--batch-sizes",
                                      "1", "--iters", "3", "--warmup", "1", "--max-warmup", "2", "--threads", "2",
                                      "--in-process", "--max-images", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "1 variant(s) to run, 0 from parity.json" in result.output
    sources = {a["variant"]: a["source"] for a in fileio.read_json(bench_run.bench)["accuracy"]}
    assert sources == {"onnxruntime": "measured"}


def test_cli_bench_rows_carry_the_median_interval_and_why_they_stopped(bench_run):
    result = CliRunner().invoke(app, ["bench", str(bench_run.path), "--backends", "torch", "--batch-sizes", "1,2",
                                      "--warmup", "1", "--max-warmup", "2", "--threads", "2", "--in-process",
                                      "--no-accuracy", "--device", "cpu", "--min-iters", "6", "--rel-ci", "0.05",
                                      "--max-time", "0.5"])
    assert result.exit_code == 0, result.output
    report = fileio.read_json(bench_run.bench)
    assert report["settings"]["rel_ci"] == 0.05 and report["settings"]["max_time_s"] == 0.5
    md = (bench_run.path / "bench.md").read_text()
    for row in report["results"]:
        p50, (low, high) = row["latency_ms"]["p50"], row["p50_ci_ms"]
        assert low <= p50 <= high and row["iterations"] >= 6 and row["throughput_ips"]  # old keys stay
        if row["stop_reason"] == "converged":  # which one depends on this machine's noise; each must be true
            assert row["p50_ci_rel"] <= 0.05
        else:
            assert row["stop_reason"] == "time budget" and row["timed_s"] >= 0.5 and row["p50_ci_rel"] > 0.05
        assert row["p50_ci_rel"] == pytest.approx(max(p50 - low, high - p50) / p50)
        assert (f"| {p50:.2f} ± {max(p50 - low, high - p50):.2f} |" in md
                and f"| {row['iterations']} | {row['stop_reason']} |" in md)
    result = CliRunner().invoke(app, ["bench", str(bench_run.path), "--rel-ci", "0"])
    assert result.exit_code == 2 and "rel_ci" in result.output


def test_cli_bench_bad_input_is_one_line(bench_run):
    result = CliRunner().invoke(app, ["bench", str(bench_run.path), "--backends", "torch+fp8"])
    assert result.exit_code == 2
    assert "unknown modifier" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["bench", str(bench_run.path), "--batch-sizes", "0"])
    assert result.exit_code == 2


@pytest.mark.gpu
def test_gpu_variants_agree_with_eager_and_report_device_memory(bench_run):
    ctx = RuntimeContext(bench_run, "cuda", None)
    images = cell_input(2, 64)
    with build_runner(parse_variant("torch"), ctx) as eager_runner:
        eager = eager_runner.infer(images)
    with build_runner(parse_variant("torch+graph"), ctx) as graph:
        np.testing.assert_allclose(graph.infer(images), eager, atol=1e-4, rtol=1e-4)
    with build_runner(parse_variant("torch+fp16+cl"), ctx) as fp16_runner:
        fp16 = fp16_runner.infer(images)
    assert (fp16.argmax(1) == eager.argmax(1)).mean() > 0.99
    report = run_bench(bench_run, bench_config(["torch", "torch+fp16+cl+graph"], [1, 2], device="cuda", max_images=4),
                       write_reports=False)
    for row in report["results"]:
        assert row["status"] == "ok" and row["timer"] == "cuda_events"
        assert row["memory"]["device_peak_mb"] > row["memory"]["torch_allocator_peak_mb"] > 0


class CountingRunner(Runner):
    """Counts prepare/run calls; `prepare` marks its output as 'on the device'."""

    name = "counting"

    def __init__(self):
        super().__init__("fp32", "cpu")
        self.prepared = 0
        self.runs = 0
        self.to_host = 0
        self.release_error: str | None = None

    def prepare(self, images):
        self.prepared += 1
        return ("on-device", images)

    def run(self, prepared):
        assert prepared[0] == "on-device"
        self.runs += 1
        return prepared[1].mean()

    def synchronize(self):
        pass

    def to_numpy(self, output):
        self.to_host += 1
        return np.asarray(output)

    def release(self):
        if self.release_error:
            raise RuntimeError(self.release_error)


@pytest.mark.parametrize("include_transfer", [False, True])
def test_input_is_placed_once_unless_transfer_is_included(monkeypatch, include_transfer, tmp_path):
    from segdeploy.bench.cell import run_cell

    runner = CountingRunner()
    monkeypatch.setitem(BACKENDS._entries, "counting", BackendSpec(build=lambda variant, ctx: runner,
                                                                   description="test double", reads_graph=False))
    spec = cell_spec(Variant("counting"), tmp_path, bench_config([], [2], iters=5, threads=1,
                                                                 include_transfer=include_transfer),
                     2, 16, WarmupPolicy(3, 2, 0.05, 3))
    row = run_cell(spec)
    assert row["status"] == "ok" and row["warmup_iterations"] == 3 and runner.runs == 8
    assert runner.prepared == (8 if include_transfer else 1)
    assert runner.to_host == (8 if include_transfer else 0)
    assert row["include_transfer"] is include_transfer
    assert runner.closed and "close_error" not in row


def test_an_error_at_close_is_recorded_in_the_row(monkeypatch, tmp_path):
    from segdeploy.bench.cell import run_cell

    runner = CountingRunner()
    runner.release_error = "could not free the device buffers\nsecond line"
    monkeypatch.setitem(BACKENDS._entries, "counting", BackendSpec(build=lambda variant, ctx: runner,
                                                                   description="test double", reads_graph=False))
    row = run_cell(cell_spec(Variant("counting"), tmp_path, bench_config([], [2], iters=3, threads=1), 2, 16,
                             WarmupPolicy(1, 2, 0.05, 2)))
    assert row["status"] == "ok" and row["latency_ms"]["p50"] > 0  # measured before the close
    assert row["close_error"] == "RuntimeError: could not free the device buffers"
    assert runner.closed


def test_parity_closes_the_runners_it_built_when_a_later_one_fails(bench_run, monkeypatch):
    import segdeploy.evaluation.parity as parity
    from segdeploy.core.config import ParityConfig
    from segdeploy.core.errors import SegdeployError

    built, real_build = [], parity.build_runner

    def build(variant, ctx):
        if built:  # the torch reference is built first; the candidate's graph "cannot be loaded"
            raise SegdeployError(f"{variant.name} cannot load its graph")
        built.append(real_build(variant, ctx))
        return built[-1]

    monkeypatch.setattr(parity, "build_runner", build)
    with pytest.raises(SegdeployError, match="onnxruntime cannot load its graph"):
        parity.run_parity(bench_run, ParityConfig(["onnxruntime"], max_images=2))
    assert len(built) == 1 and built[0].closed
    assert not bench_run.parity.exists()
