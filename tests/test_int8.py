"""INT8 graphs that hold on every x86 CPU: NNCF's graph (the CPU default, 7-bit first-layer weights), ONNX
Runtime's with reduce_range, accuracy control, the ISA facts sidecars record, and the INT8 parity check under
an AVX2 cap (ONEDNN_MAX_CPU_ISA) in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.core import env, fileio
from segdeploy.core.errors import SegdeployError
from segdeploy.core.rundir import RunDir

pytest.importorskip("nncf")
AVX2_CAP = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2"}


def _copy(trained_run, path: Path) -> RunDir:
    shutil.copytree(trained_run.path, path, ignore=shutil.ignore_patterns("*_cache"))
    return RunDir.open(path)


def _export(run: RunDir, *flags: str) -> None:
    result = CliRunner().invoke(app, ["export", str(run.path), "--precision", "int8", "--calib-images", "4", *flags])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def nncf_run(trained_run, tmp_path_factory) -> RunDir:
    """The tiny run with the default INT8 graph (NNCF), exported through the CLI (read only)."""
    run = _copy(trained_run, tmp_path_factory.mktemp("int8") / "run")
    _export(run)
    return run


def _conv_weights(path: Path) -> list[tuple[str, np.ndarray]]:
    """(Conv name, its INT8 weight values) in graph order, for every Conv whose weight is dequantised INT8."""
    graph = onnx.load(str(path)).graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    weights = []
    for node in graph.node:
        dequantize = producers.get(node.input[1]) if node.op_type == "Conv" else None
        if dequantize is not None and dequantize.op_type == "DequantizeLinear":
            weights.append((node.name, initializers[dequantize.input[0]]))
    return weights


def test_cpu_isa_reads_the_int8_instruction_level_and_the_cap():
    flags = dict.fromkeys(env.CPU_FLAGS, False)
    assert env.cpu_isa({**flags, "avx2": True}) == "avx2"
    assert env.cpu_isa({**flags, "avx2": True, "avx512f": True}) == "avx512"
    assert env.cpu_isa({**flags, "avx2": True, "avx512f": True, "avx512_vnni": True}) == "avx512_vnni"
    assert env.cpu_isa({**flags, "avx2": True, "avx_vnni": True}) == "avx_vnni"
    assert env.cpu_isa(flags) == "sse" and env.cpu_isa(None) is None
    vnni = {**flags, "avx2": True, "avx512f": True, "avx512_vnni": True}
    assert env.effective_cpu_isa(vnni, {"ONEDNN_MAX_CPU_ISA": "AVX2"}) == "avx2"
    assert env.effective_cpu_isa(vnni, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}) == "avx512_vnni"  # caps only lower
    assert env.effective_cpu_isa({**flags, "avx2": True}, {}) == "avx2"


def test_nncf_is_the_default_and_keeps_the_first_layer_7_bit(nncf_run):
    """NNCF's overflow fix: the first convolution (the one that sees the image) uses half the INT8 range,
    so VPMADDUBSW's int16 pair sums cannot saturate on CPUs without VNNI; later layers use the full range."""
    sidecar = fileio.read_json(nncf_run.onnx_sidecar("int8"))
    details = sidecar["int8"]
    assert details["quantizer"] == "nncf" and details["settings"]["preset"] == "performance"
    assert details["tensorrt_compatible"] is False and details["float_layers"] == []
    assert details["calibration"]["images"] == 4
    facts = details["calibrated_on"]
    assert facts["cpu_flags"] == env.cpu_flags() and facts["cpu_isa"] == env.cpu_isa(env.cpu_flags())
    weights = _conv_weights(nncf_run.onnx_path("int8"))
    assert len(weights) == details["weighted_layers"]
    first, rest = weights[0][1], [w for _, w in weights[1:]]
    assert np.abs(first.astype(np.int32)).max() <= 64, (first.min(), first.max())  # 7 bits: levels -64..64
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in rest) > 64


def test_nncf_graph_matches_torch_on_onnxruntime(nncf_run):
    result = CliRunner().invoke(app, ["parity", str(nncf_run.path), "--backends", "onnxruntime",
                                      "--precision", "int8", "--threads", "2"])
    (row,) = fileio.read_json(nncf_run.parity)["results"]
    assert row["graph"] == "int8" and row["status"] == "ok", result.output
    assert abs(row["miou_delta"]) <= 0.01 and row["argmax_agreement"] >= 0.9, row


def test_ort_quantiser_for_cpus_uses_7_bit_weights(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path / "run")
    _export(run, "--int8-quantizer", "ort", "--int8-activations", "uint8")
    details = fileio.read_json(run.onnx_sidecar("int8"))["int8"]
    assert details["quantizer"] == "ort" and details["settings"]["reduce_range"] is True
    weights = [w for _, w in _conv_weights(run.onnx_path("int8"))]
    assert weights and all(w.min() >= -64 and w.max() <= 64 for w in weights)


def test_tensorrt_build_refuses_the_nncf_graph_with_the_command_that_fixes_it(nncf_run):
    from segdeploy.engines.trt_build import _require_tensorrt_graph

    with pytest.raises(SegdeployError, match="TensorRT parses only symmetric INT8") as caught:
        _require_tensorrt_graph(nncf_run, "int8")
    assert "--int8-quantizer ort --trt" in caught.value.hint


def test_cli_rejects_accuracy_control_with_the_ort_quantiser(trained_run):
    result = CliRunner().invoke(app, ["export", str(trained_run.path), "--precision", "int8",
                                      "--int8-quantizer", "ort", "--max-miou-drop", "0.5"])
    assert result.exit_code == 2 and "--max-miou-drop uses NNCF" in result.output
    result = CliRunner().invoke(app, ["export", str(trained_run.path), "--precision", "int8", "--max-miou-drop", "0"])
    assert result.exit_code == 2 and "max_miou_drop" in result.output


def test_accuracy_control_keeps_layers_in_float_until_the_drop_is_within_budget(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path / "run")
    _export(run, "--max-miou-drop", "0.01")
    details = fileio.read_json(run.onnx_sidecar("int8"))["int8"]
    control = details["accuracy_control"]
    assert control["max_miou_drop"] == 0.01 and control["validation_images"] > 0
    assert control["within_budget"] is True and control["miou_drop"] <= 0.01, control
    if control["fully_quantized_drop"] > 0.01:  # NNCF had to revert layers: they are the graph's float layers
        assert control["reverted_to_float"] and set(control["reverted_to_float"]) <= set(details["float_layers"])
    # the measured drop is the graph's: parity's mIoU on the same split agrees
    result = CliRunner().invoke(app, ["parity", str(run.path), "--backends", "onnxruntime", "--precision", "int8",
                                      "--threads", "2"])
    (row,) = fileio.read_json(run.parity)["results"]
    assert row["status"] == "ok", result.output
    report = fileio.read_json(run.parity)
    assert report["images"] == control["validation_images"]
    assert abs(100 * row["miou_delta"] + control["miou_drop"]) < 0.05, (row["miou_delta"], control)


# --------------------------------------------------------------------------- the AVX2 cap

PROBE = """
import json, sys
import numpy as np
from segdeploy.core import env
from segdeploy.core.rundir import RunDir
from segdeploy.runtime.variants import RuntimeContext, build_runner, parse_variant

run, images = RunDir.open(sys.argv[1]), np.load(sys.argv[2])
runner = build_runner(parse_variant("openvino", "int8"), RuntimeContext(run, "cpu", 2))
primitives = sorted({op.get_rt_info()["primitiveType"].astype(str) for op in runner.compiled.get_runtime_model().get_ops()
                     if op.get_rt_info()["layerType"].astype(str) == "Convolution"})
np.save(sys.argv[3], runner.infer(images))
runner.close()
print(json.dumps({"primitives": primitives, "capabilities": list(env.openvino_capabilities()),
                  "effective_cpu_isa": env.effective_cpu_isa()}))
"""


def run_capped(run: RunDir, images: np.ndarray, folder: Path, cap: dict[str, str]) -> tuple[dict, np.ndarray]:
    """OpenVINO INT8 logits of `images` in a subprocess with the ISA cap `cap` in its environment."""
    np.save(folder / "images.npy", images)
    environment = {**os.environ, **cap}
    result = subprocess.run([sys.executable, "-c", PROBE, str(run.path), str(folder / "images.npy"),
                             str(folder / "logits.npy")], capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), np.load(folder / "logits.npy")


@pytest.mark.openvino
@pytest.mark.isa_cap
def test_int8_parity_holds_under_an_avx2_cap(nncf_run, tmp_path):
    """The NNCF graph on OpenVINO with oneDNN capped at AVX2 (VPMADDUBSW, as on Zen 2/3 or Intel before Ice
    Lake) agrees with torch FP32 where torch is decided, as the runner contract asks of every INT8 runner."""
    pytest.importorskip("openvino")
    from segdeploy.runtime.variants import RuntimeContext, build_runner, parse_variant

    images = np.random.default_rng(7).standard_normal((3, 3, 64, 64), dtype=np.float32)
    facts, logits = run_capped(nncf_run, images, tmp_path, AVX2_CAP)
    if any("avx512" in name for name in facts["primitives"]):
        pytest.skip(f"this OpenVINO ignores ONEDNN_MAX_CPU_ISA=AVX2 (INT8 convolutions: {facts['primitives']})")
    assert facts["effective_cpu_isa"] in ("avx2", "sse") and "BF16" not in facts["capabilities"], facts
    torch_runner = build_runner(parse_variant("torch"), RuntimeContext(nncf_run, "cpu", 2))
    want = torch_runner.infer(images)
    top2 = np.sort(want, axis=1)
    decided = (top2[:, -1] - top2[:, -2]) >= 0.5
    agree = logits.argmax(1) == want.argmax(1)
    assert decided.mean() > 0.2 and agree[decided].mean() >= 0.95, (agree[decided].mean(), facts)
