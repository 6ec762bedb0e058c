"""TensorRT engines: manifest, rebuild and profile logic on CPU; the real build and runner need trt + gpu."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from segdeploy.core import fileio
from segdeploy.core.config import ExportConfig
from segdeploy.cli import app
from segdeploy.core.errors import BackendUnavailable, ConfigError, SegdeployError
from segdeploy.core.rundir import RunDir
from segdeploy.runtime.variants import load_runner
from segdeploy.engines.tensorrt import (BuildOptions, build_decision, check_batch, check_manifest, current_manifest,
                           engine_path, import_tensorrt, manifest_mismatches, manifest_path, precision_flags,
                           profile_shapes)

GPU = {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


def test_missing_tensorrt_is_one_line_error_naming_the_extra(no_tensorrt, trained_run):
    with pytest.raises(BackendUnavailable, match=r"pip install 'segdeploy\[trt\]'"):
        import_tensorrt()
    with pytest.raises(BackendUnavailable, match=r"segdeploy\[trt\]"):
        load_runner("tensorrt", trained_run, "fp32", device="cuda")
    result = CliRunner().invoke(app, ["export", str(trained_run.path), "--trt"])
    assert result.exit_code == 2
    assert "TensorRT is not installed: pip install 'segdeploy[trt]'" in result.output
    assert "Traceback" not in result.output


def test_build_options_validate_the_batch_profile():
    BuildOptions(1, 4, 8).validate()
    for bad in (BuildOptions(0, 1, 8), BuildOptions(2, 1, 8), BuildOptions(1, 9, 8), BuildOptions(1, 1, 8, 0.0)):
        with pytest.raises(ConfigError):
            bad.validate()
    assert profile_shapes(BuildOptions(1, 2, 8), 256) == {
        "min": [1, 3, 256, 256], "opt": [2, 3, 256, 256], "max": [8, 3, 256, 256]}


def test_precision_flags_only_for_weakly_typed_tensorrt_10():
    for precision in ("fp32", "fp16", "int8"):
        assert precision_flags("11.0.0", precision, strongly_typed=True) == []
        assert precision_flags("11.2.1", precision, strongly_typed=False) == []
        assert precision_flags("10.13.0", precision, strongly_typed=True) == []
    assert precision_flags("10.13.0", "fp16", strongly_typed=False) == ["FP16"]
    assert precision_flags("10.13.0", "int8", strongly_typed=False) == ["INT8", "FP16"]


@pytest.fixture
def engine_setup(tmp_path):
    """A run directory holding an ONNX file and an engine file with a matching manifest (no TensorRT:
    the engine bytes are opaque to this logic, which only hashes them)."""
    run = RunDir(tmp_path / "run")
    onnx_file = run.onnx_path("fp16")
    fileio.write_bytes(onnx_file, b"graph-v1")
    engine, manifest_file = engine_path(run, "fp16"), manifest_path(run, "fp16")
    fileio.write_bytes(engine, b"serialized-engine")
    current = current_manifest(onnx_file, "fp16", BuildOptions(), 64, "10.13.0", GPU)
    fileio.write_json(manifest_file, {**current, "engine_sha256": fileio.sha256_file(engine), "build_seconds": 1.0})
    return run, onnx_file, engine, manifest_file, current


def test_engine_layout_and_manifest_hashes(engine_setup):
    run, onnx_file, engine, manifest_file, current = engine_setup
    assert engine == run.path / "engines" / "fp16.plan" and manifest_file == run.path / "engines" / "fp16.json"
    import hashlib

    assert current["onnx_sha256"] == hashlib.sha256(b"graph-v1").hexdigest()
    assert current["profile"]["max"] == [8, 3, 64, 64]
    assert current["tensorrt_version"] == "10.13.0" and current["compute_capability"] == "9.0"


def test_build_decision(engine_setup):
    run, onnx_file, engine, manifest_file, current = engine_setup
    assert build_decision(engine, manifest_file, current, rebuild=False) == (False, "manifest matches")
    assert build_decision(engine, manifest_file, current, rebuild=True) == (True, "--rebuild")

    other_gpu = {**current, "gpu_name": "NVIDIA L4", "compute_capability": "8.9"}
    build, reason = build_decision(engine, manifest_file, other_gpu, rebuild=False)
    assert build and "gpu_name" in reason and "compute_capability" in reason

    fileio.write_bytes(onnx_file, b"graph-v2")  # re-exported graph
    changed = current_manifest(onnx_file, "fp16", BuildOptions(), 64, "10.13.0", GPU)
    build, reason = build_decision(engine, manifest_file, changed, rebuild=False)
    assert build and reason.startswith("onnx_sha256")

    bigger = current_manifest(onnx_file, "fp16", BuildOptions(max_batch=16), 64, "10.13.0", GPU)
    assert "profile" in build_decision(engine, manifest_file, bigger, rebuild=False)[1]

    fileio.write_bytes(engine, b"truncated")
    assert build_decision(engine, manifest_file, current, rebuild=False) == (True, "engine file does not match its manifest")
    engine.unlink()
    assert build_decision(engine, manifest_file, current, rebuild=False) == (True, "no engine yet")


def test_manifest_mismatch_on_load_says_to_rebuild(engine_setup):
    run, _, engine, manifest_file, current = engine_setup
    manifest = fileio.read_json(manifest_file)
    keys = ("tensorrt_version", "gpu_name", "compute_capability", "onnx_sha256")
    check_manifest(engine, manifest, current, keys)  # same machine: no error
    here = {**current, "tensorrt_version": "11.0.0"}
    with pytest.raises(SegdeployError, match="tensorrt_version: engine '10.13.0', here '11.0.0'") as info:
        check_manifest(engine, manifest, here, keys)
    assert "--rebuild" in info.value.hint and "--precision fp16" in info.value.hint
    assert manifest_mismatches(manifest, {**current, "gpu_name": "NVIDIA L4"}) == [
        "gpu_name: engine 'NVIDIA H100 80GB HBM3', here 'NVIDIA L4'"]


def test_batch_outside_engine_profile_is_an_error():
    profile = profile_shapes(BuildOptions(2, 4, 8), 64)
    check_batch((2, 3, 64, 64), profile)
    check_batch((8, 3, 64, 64), profile)
    with pytest.raises(SegdeployError, match=r"batch 9 is outside the engine's profile \(min 2, max 8\)"):
        check_batch((9, 3, 64, 64), profile)
    with pytest.raises(SegdeployError, match="batch 1 is outside"):
        check_batch((1, 3, 64, 64), profile)
    with pytest.raises(SegdeployError, match="expects input"):
        check_batch((2, 3, 32, 32), profile)


@pytest.mark.gpu
@pytest.mark.trt
def test_engines_build_reuse_and_match_onnxruntime(trained_run, tmp_path):
    from segdeploy.export.onnx import export_graphs
    from segdeploy.engines.tensorrt import build_engines, timing_cache_path

    path = tmp_path / "run"
    shutil.copytree(trained_run.path, path)
    run = RunDir.open(path)
    export_graphs(run, ExportConfig(precisions=["fp32", "fp16", "int8"], calib_images=4))
    options = BuildOptions(min_batch=1, opt_batch=2, max_batch=4)
    built = build_engines(run, ["fp32", "fp16", "int8"], options)
    assert all(flag for _, flag in built.values())
    assert timing_cache_path(run).stat().st_size > 0
    manifest = fileio.read_json(manifest_path(run, "fp16"))
    assert manifest["build_seconds"] > 0 and manifest["profile"]["max"][0] == 4
    assert not any(flag for _, flag in build_engines(run, ["fp32", "fp16", "int8"], options).values())

    images = np.random.default_rng(0).standard_normal((3, 3, 64, 64), dtype=np.float32)
    reference = load_runner("onnxruntime", run, "fp32").infer(images)
    for precision, atol in (("fp32", 1e-2), ("fp16", 5e-2)):
        runner = load_runner("tensorrt", run, precision, device="cuda")
        assert np.abs(runner.infer(images) - reference).max() < atol
    with pytest.raises(SegdeployError, match="outside the engine's profile"):
        runner.infer(np.zeros((5, 3, 64, 64), np.float32))
