"""The openvino backend beyond the runner contract (tests/test_runtime.py): CLI parity and bench rows, why a
variant cannot run, the compile cache, and the CPU facts in bench.json's environment block."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.core import env, fileio
from segdeploy.core.rundir import RunDir
from segdeploy.runtime.variants import RuntimeContext, build_runner, parse_variant, unavailable_reason
from tests.conftest import cpu_feature_missing

from conftest import clone_run

pytest.importorskip("openvino")
pytestmark = pytest.mark.openvino


@pytest.fixture
def ov_run(trained_run, tmp_path) -> RunDir:
    """A private clone of the trained run (the tests write parity.json, bench.json, the compile cache; its
    checkpoints and graphs are read-only links)."""
    return clone_run(trained_run, tmp_path / "run")


def no_bf16(monkeypatch):
    monkeypatch.setattr(env, "openvino_capabilities", lambda: ("FP32", "INT8", "EXPORT_IMPORT"))


def test_bf16_is_unavailable_with_the_reason_on_a_cpu_without_it(monkeypatch, ov_run):
    no_bf16(monkeypatch)
    reason = unavailable_reason(parse_variant("openvino+bf16"), "cpu")
    assert "no BF16" in reason and "FP32, INT8, EXPORT_IMPORT" in reason
    assert unavailable_reason(parse_variant("openvino"), "cpu") is None
    only_bf16 = CliRunner().invoke(app, ["parity", str(ov_run.path), "--backends", "openvino+bf16", "--max-images", "2"])
    assert only_bf16.exit_code == 2, only_bf16.output  # nothing can run: refused before any work, not a pass
    assert "nothing could be measured here" in only_bf16.output and "no BF16" in only_bf16.output
    assert not ov_run.parity.exists()
    result = CliRunner().invoke(app, ["parity", str(ov_run.path), "--backends", "openvino,openvino+bf16",
                                      "--max-images", "2"])
    rows = {row["variant"]: row for row in fileio.read_json(ov_run.parity)["results"]}
    assert rows["openvino+bf16"]["status"] == f"unavailable: {reason}" and rows["openvino+bf16"]["passed"] is None
    assert rows["openvino"]["status"] == "ok", result.output


def test_missing_openvino_is_a_reason_not_a_crash(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else find_spec(name, *a))
    assert unavailable_reason(parse_variant("openvino", "int8"), "cpu") == \
        "openvino is not installed: pip install 'segdeploy[openvino]'"


def test_variants_name_their_arithmetic_and_device():
    assert parse_variant("openvino+bf16").precision == "bf16"  # the fp32 graph computed in bf16
    assert parse_variant("openvino+bf16", "int8").precision == "int8"
    assert parse_variant("openvino+tput", "fp16").name == "openvino+throughput"
    from segdeploy.runtime.variants import runner_device

    assert runner_device(parse_variant("openvino"), "cuda") == "cpu"


def test_cli_parity_runs_fp32_and_bf16_inference(ov_run):
    result = CliRunner().invoke(app, ["parity", str(ov_run.path), "--backends", "openvino,openvino+bf16",
                                      "--max-images", "5", "--threads", "2"])
    rows = {r["variant"]: r for r in fileio.read_json(ov_run.parity)["results"]}
    assert rows["openvino"]["passed"] is True and rows["openvino"]["max_abs_err"] < 1e-4, result.output
    bf16 = rows["openvino+bf16"]
    if cpu_feature_missing("bf16"):  # what a CPU without BF16 gives: the row says why, fp32 alone decides
        assert bf16["status"].startswith("unavailable: this CPU has no BF16") and bf16["passed"] is None
        assert result.exit_code == 0, result.output
        return
    assert (bf16["precision"], bf16["graph"], bf16["device"]) == ("bf16", "fp32", "cpu")
    assert 1e-4 < bf16["max_abs_err"] < 1.0  # really bf16 arithmetic, and still the same model
    assert bf16["argmax_agreement"] > 0.9
    assert result.exit_code == (0 if bf16["passed"] else 1)


def test_cli_bench_rows_carry_latency_accuracy_and_openvino_settings(ov_run):
    # the command in its own process, as a user runs it (the throughput hint: tests/test_runtime.py)
    result = subprocess.run([sys.executable, "-m", "segdeploy", "bench", str(ov_run.path), "--backends", "openvino",
                             "--batch-sizes", "3", "--iters", "3", "--warmup", "1", "--warmup-window", "2",
                             "--max-warmup", "3", "--threads", "2", "--max-images", "4", "--device", "cpu"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = fileio.read_json(ov_run.bench)
    (row,) = report["results"]
    assert (row["variant"], row["batch_size"], row["status"]) == ("openvino", 3, "ok")
    assert row["latency_ms"]["p50"] > 0 and 0 < row["miou"] <= 1 and row["argmax_agreement"] > 0.999
    props = row["runtime_properties"]
    assert props["PERFORMANCE_HINT"] == "LATENCY" and props["INFERENCE_NUM_THREADS"] == "2"
    assert props["INFERENCE_PRECISION_HINT"].endswith("'float32'>")
    environment = report["environment"]
    assert environment["packages"]["openvino"] == importlib.metadata.version("openvino")
    assert "FP32" in environment["openvino_capabilities"]
    assert set(environment["cpu_flags"]) == set(env.CPU_FLAGS)


def test_cpu_flags_come_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    flags = env.cpu_flags(cpuinfo)
    assert {name for name, present in flags.items() if present} == {"avx2", "avx512f", "avx512_bf16", "amx_tile",
                                                                      "amx_bf16"}
    assert env.cpu_flags(tmp_path / "missing") is None


def test_compile_cache_is_reused_and_never_serves_a_replaced_graph(ov_run):
    import onnx
    from onnx import numpy_helper

    images = np.random.default_rng(3).standard_normal((2, 3, 64, 64), dtype=np.float32)
    ctx = RuntimeContext(ov_run, "cpu", 2)
    with build_runner(parse_variant("openvino"), ctx) as runner:
        first = runner.infer(images)
    blobs = list(ov_run.compile_cache("openvino").glob("f32-latency-threads2*/*.blob"))  # "-cap-avx2" when capped
    assert len(blobs) == 1
    with build_runner(parse_variant("openvino"), ctx) as runner:
        assert np.array_equal(runner.infer(images), first)  # from the cache
    # re-export in place: the last bias of the graph moves every logit of class 0 by +1
    path = ov_run.onnx_path("fp32")
    model = onnx.load(str(path))
    path.unlink()  # the link to the shared run's graph: this run gets a file of its own
    bias = next(t for t in reversed(model.graph.initializer) if len(t.dims) == 1)
    values = numpy_helper.to_array(bias).copy()
    values[0] += 1.0
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(path))
    sidecar = fileio.read_json(ov_run.onnx_sidecar("fp32"))  # as a re-export records it
    fileio.write_json(ov_run.onnx_sidecar("fp32"), {**sidecar, "sha256": fileio.sha256_file(path)})
    with build_runner(parse_variant("openvino"), ctx) as runner:
        changed = runner.infer(images)
    np.testing.assert_allclose(changed[:, 0], first[:, 0] + 1.0, atol=1e-4)
    np.testing.assert_allclose(changed[:, 1:], first[:, 1:], atol=1e-5)


def test_runners_closed_in_build_order_leave_signal_delivery_intact(ov_run):
    """The SIGSEGV that ended the one-process suite (benchmarks/openvino_altstack_repro.py): each OpenVINO CPU
    plugin instance swaps the thread's alternate signal stack and restores the previous one when destroyed,
    so plugins destroyed in build order left the stack pointing at freed memory and the next signal with a
    Python handler killed the process. With one Core per process, two runners closed in build order and a
    signal after them are harmless. In a fresh interpreter: the test process's state is not at stake."""
    code = f"""
import os, signal
from segdeploy.core.rundir import RunDir
from segdeploy.runtime.variants import load_runner
run = RunDir.open({str(ov_run.path)!r})
first, second = load_runner("openvino", run), load_runner("openvino+throughput", run)
first.close()
second.close()
signal.signal(signal.SIGUSR1, lambda *args: print("delivered", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
"""
    result = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "delivered", result.stderr[-2000:]
