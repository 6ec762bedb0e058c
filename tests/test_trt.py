"""TensorRT without TensorRT: install hints, profiles, manifests, timing-cache fallback, build errors, I/O
dtypes and the CUDA-graph include-transfer path, each on CPU with the real logic (test doubles stand in
for TensorRT's builder config and for a runner that prepares bound buffers). GPU tests: test_trt_gpu.py."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.core import fileio
from segdeploy.core.config import EngineConfig
from segdeploy.core.errors import BackendUnavailable, ConfigError, SegdeployError
from segdeploy.core.rundir import RunDir
from segdeploy.engines.tensorrt import (MANIFEST_KEYS, build_decision, check_manifest, cuda_mismatch,
                                        current_manifest, engine_path, import_tensorrt, install_hint,
                                        manifest_mismatches, manifest_path, precision_flags, profile_batches,
                                        profile_for, profile_shapes, tensorrt_cuda_major, timing_cache_path, validate)
from segdeploy.engines.trt_build import attach_timing_cache, build_error, logged_errors, polygraphy_profiles
from segdeploy.runtime.base import Runner
from segdeploy.runtime.variants import load_runner

GPU = {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


def test_missing_tensorrt_names_the_extra_for_torchs_cuda(no_tensorrt, trained_run):
    extra = {"12": "trt-cu12", "13": "trt-cu13"}.get((torch.version.cuda or "").split(".")[0])
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed") as info:
        import_tensorrt()
    assert (f"segdeploy[{extra}]" if extra else "trt-cu12") in str(info.value)
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        load_runner("tensorrt", trained_run, "fp32", device="cuda")
    result = CliRunner().invoke(app, ["export", str(trained_run.path), "--trt"])
    assert result.exit_code == 2 and "TensorRT is not installed: pip install 'segdeploy[trt-cu" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["export", str(trained_run.path), "--trt", "--opt-batch", "1,16"])
    assert result.exit_code == 2 and "every opt <= max" in result.output  # checked before anything is exported


def test_tensorrt_wheels_must_match_torchs_cuda():
    assert tensorrt_cuda_major(["numpy", "tensorrt", "tensorrt_cu13", "tensorrt-cu13-libs"]) == "13"
    assert tensorrt_cuda_major(["tensorrt_cu12_bindings"]) == "12"
    assert tensorrt_cuda_major(["tensorrt"]) is None  # a tar/deb install: nothing to compare
    assert cuda_mismatch("13", "13.0") is None and cuda_mismatch(None, "12.8") is None
    message = cuda_mismatch("13", "12.8")
    assert "CUDA 13, torch for CUDA 12.8" in message and "segdeploy[trt-cu12]" in message
    assert "trt-cu13" in install_hint("13.0") and "trt-cu12" in install_hint("12.6")
    assert "trt-cu12" in install_hint(None) and "trt-cu13" in install_hint(None)  # a CPU torch: both named


def test_one_profile_per_batch_to_tune_for():
    assert profile_batches(EngineConfig(opt_batches=[8, 1], max_batch=8)) == [(1, 1, 1), (2, 8, 8)]
    cfg = EngineConfig(min_batch=1, opt_batches=[4, 1, 16, 4], max_batch=32)
    assert profile_batches(cfg) == [(1, 1, 1), (2, 4, 4), (5, 16, 32)]
    profiles = profile_shapes(cfg, 256)
    assert profiles[1] == {"min": [2, 3, 256, 256], "opt": [4, 3, 256, 256], "max": [4, 3, 256, 256]}
    for batch in range(1, 33):  # every batch in [min, max] has exactly one profile
        owners = [i for i, p in enumerate(profiles) if p["min"][0] <= batch <= p["max"][0]]
        assert owners == [profile_for((batch, 3, 256, 256), profiles)]
    for opt in (1, 4, 16):  # a benchmarked batch runs with the profile tuned for it
        assert profiles[profile_for((opt, 3, 256, 256), profiles)]["opt"][0] == opt
    with pytest.raises(SegdeployError, match=r"batch 33 is outside the engine's profiles \(min 1, max 32\)"):
        profile_for((33, 3, 256, 256), profiles)
    with pytest.raises(SegdeployError, match="expects input"):
        profile_for((2, 3, 128, 128), profiles)
    with pytest.raises(SegdeployError, match="4-d input"):
        profile_for((3, 256, 256), profiles)


def test_engine_settings_are_validated():
    validate(EngineConfig(opt_batches=[1, 8], max_batch=8, optimization_level=0))
    for bad in (EngineConfig(min_batch=0), EngineConfig(opt_batches=[16]), EngineConfig(opt_batches=[]),
                EngineConfig(min_batch=2, opt_batches=[1]), EngineConfig(workspace_gb=0.0),
                EngineConfig(optimization_level=6)):
        with pytest.raises(ConfigError):
            validate(bad)


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
    current = current_manifest(onnx_file, "fp16", EngineConfig(), 64, "11.4.0", GPU)
    fileio.write_json(manifest_file, {**current, "engine_sha256": fileio.sha256_file(engine), "build_seconds": 1.0})
    return run, onnx_file, engine, manifest_file, current


def test_every_build_setting_is_in_the_rebuild_key(engine_setup):
    run, onnx_file, engine, manifest_file, current = engine_setup
    assert engine == run.path / "engines" / "fp16.plan" and manifest_file == run.path / "engines" / "fp16.json"
    assert build_decision(engine, manifest_file, current, rebuild=False) == (False, "manifest matches")
    assert build_decision(engine, manifest_file, current, rebuild=True) == (True, "--rebuild")
    changes = {"profiles": EngineConfig(opt_batches=[4]), "workspace_bytes": EngineConfig(workspace_gb=2.0),
               "strongly_typed": EngineConfig(strongly_typed=False), "tf32": EngineConfig(tf32=True),
               "optimization_level": EngineConfig(optimization_level=1)}
    for key, cfg in changes.items():
        changed = current_manifest(onnx_file, "fp16", cfg, 64, "11.4.0", GPU)
        build, reason = build_decision(engine, manifest_file, changed, rebuild=False)
        assert build and reason.startswith(f"{key}:"), (key, reason)
    assert set(changes) | {"onnx_sha256", "precision", "tensorrt_version", "gpu_name",
                           "compute_capability"} == set(MANIFEST_KEYS)

    other_gpu = {**current, "gpu_name": "NVIDIA L4", "compute_capability": "8.9"}
    build, reason = build_decision(engine, manifest_file, other_gpu, rebuild=False)
    assert build and "gpu_name" in reason and "compute_capability" in reason
    fileio.write_bytes(onnx_file, b"graph-v2")  # re-exported graph
    changed = current_manifest(onnx_file, "fp16", EngineConfig(), 64, "11.4.0", GPU)
    assert build_decision(engine, manifest_file, changed, rebuild=False)[1].startswith("onnx_sha256")
    fileio.write_bytes(engine, b"truncated")
    assert build_decision(engine, manifest_file, current, rebuild=False) == (True, "engine file does not match its manifest")
    engine.unlink()
    assert build_decision(engine, manifest_file, current, rebuild=False) == (True, "no engine yet")


def test_manifest_mismatch_on_load_says_to_rebuild(engine_setup):
    run, _, engine, manifest_file, current = engine_setup
    manifest = fileio.read_json(manifest_file)
    keys = ("tensorrt_version", "gpu_name", "compute_capability", "onnx_sha256")
    check_manifest(engine, manifest, current, keys)  # same machine: no error
    with pytest.raises(SegdeployError, match="tensorrt_version: engine '11.4.0', here '11.5.0'") as info:
        check_manifest(engine, manifest, {**current, "tensorrt_version": "11.5.0"}, keys)
    assert "--rebuild" in info.value.hint and "--precision fp16" in info.value.hint
    assert manifest_mismatches(manifest, {**current, "gpu_name": "NVIDIA L4"}) == [
        "gpu_name: engine 'NVIDIA H100 80GB HBM3', here 'NVIDIA L4'"]


def test_timing_cache_is_named_per_tensorrt_version_and_gpu_architecture(tmp_path):
    run = RunDir(tmp_path / "run")
    h100 = timing_cache_path(run, "11.4.0.106", "9.0")
    assert h100 == run.engines_dir / "timing-trt11.4.0.106-sm90.cache"
    assert timing_cache_path(run, "11.4.0.106", "8.9") != h100 != timing_cache_path(run, "10.13.0.35", "9.0")


class FakeBuilderConfig:
    """The timing-cache part of trt.IBuilderConfig: caches made on `device` load, others are refused
    (set_timing_cache returns False, as TensorRT does with ignore_mismatch=False), garbage raises."""

    def __init__(self, device: bytes = b"sm90", accept_fresh: bool = True):
        self.device, self.accept_fresh, self.cache = device, accept_fresh, None

    def create_timing_cache(self, data: bytes):
        if data and not data.startswith(b"cache:"):
            raise RuntimeError("Invalid timing cache")
        return data or b"cache:" + self.device + b":empty"

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        ok = cache.split(b":")[1] == self.device and (self.accept_fresh or not cache.endswith(b"empty"))
        if ok:
            self.cache = cache
        return ok


def test_timing_cache_from_elsewhere_falls_back_to_a_fresh_one():
    config = FakeBuilderConfig()
    assert attach_timing_cache(config, b"cache:sm90:entries") == "loaded" and config.cache == b"cache:sm90:entries"
    config = FakeBuilderConfig()
    assert attach_timing_cache(config, b"") == "new" and config.cache == b"cache:sm90:empty"
    for foreign in (b"cache:sm89:entries", b"\x00garbage"):
        config = FakeBuilderConfig()
        status = attach_timing_cache(config, foreign)
        assert status.startswith("refused by TensorRT") and config.cache == b"cache:sm90:empty"
    with pytest.raises(SegdeployError, match="empty timing cache"):
        attach_timing_cache(FakeBuilderConfig(accept_fresh=False), b"cache:sm89:entries")


def test_build_errors_are_one_line_quoting_the_log(tmp_path):
    log = tmp_path / "fp32.build.log"
    log.write_text("[I] Building engine\n[E] ModelImporter.cpp:949: While parsing node number 3 [Conv]:\n"
                   "    weights are INT32\n[W] something\n[E] second\n[E] third\n[E] fourth\n"
                   "[!] Could not parse ONNX correctly\n")
    assert logged_errors(log.read_text()) == [
        "ModelImporter.cpp:949: While parsing node number 3 [Conv]: weights are INT32", "second", "third", "fourth"]
    error = build_error(tmp_path / "model.onnx", RuntimeError("Could not parse ONNX correctly"), log)
    message = str(error)
    assert "\n" not in message and message.startswith("TensorRT cannot build model.onnx: RuntimeError: Could not parse ONNX")
    assert "node number 3 [Conv]: weights are INT32 | second | third (+1 more)" in message
    assert str(log) in error.hint
    assert str(build_error(tmp_path / "m.onnx", RuntimeError("boom"), tmp_path / "missing.log")) == \
        "TensorRT cannot build m.onnx: RuntimeError: boom"


def test_profiles_become_polygraphy_profiles():
    pytest.importorskip("polygraphy", reason="Polygraphy is installed by `make install` and the trt extras")
    profiles = profile_shapes(EngineConfig(opt_batches=[1, 8], max_batch=16), 64)
    converted = polygraphy_profiles("images", profiles)
    assert len(converted) == 2
    shapes = converted[1]["images"]
    assert (list(shapes.min), list(shapes.opt), list(shapes.max)) == ([2, 3, 64, 64], [8, 3, 64, 64], [16, 3, 64, 64])


def test_engine_io_dtypes_table(tmp_path):
    from segdeploy.runtime.tensorrt_runner import torch_dtype

    assert torch_dtype("FLOAT", "input", tmp_path) is torch.float32
    assert torch_dtype("HALF", "output", tmp_path) is torch.float16
    assert torch_dtype("BF16", "output", tmp_path) is torch.bfloat16
    assert torch_dtype("UINT8", "input", tmp_path) is torch.uint8  # a deploy graph's images and mask
    assert torch_dtype("INT32", "output", tmp_path) is torch.int32  # the mask of > 255 classes
    for name in ("INT8", "INT64", "FP8"):
        with pytest.raises(SegdeployError, match=f"input is {name}; segdeploy feeds and reads FLOAT") as info:
            torch_dtype(name, "input", tmp_path / "int8.plan")
        assert "\n" not in str(info.value) and "Q/DQ" in info.value.hint


class BoundBuffersRunner(Runner):
    """Prepares like the TensorRT runner: a tuple (input buffer, output buffer) that `run` reads and writes
    in place (doubling the input); the input is stored in half precision, as an fp16 engine's is."""

    name = "bound"
    precision, device = "fp16", "cpu"
    supports_cuda_graph = True
    stream_ordered = True

    def __init__(self):
        self.prepared_shapes, self.runs = [], 0

    def prepare(self, images):
        self.prepared_shapes.append(images.shape)
        inputs = torch.from_numpy(images).to(torch.float16)
        return inputs, torch.empty(inputs.shape, dtype=torch.float32)

    def input_buffer(self, prepared):
        return prepared[0]

    def run(self, prepared):
        inputs, output = prepared
        self.runs += 1
        return output.copy_(inputs.float() * 2)

    def synchronize(self):
        pass

    def to_numpy(self, output):
        return output.numpy().copy()

    def row_info(self):
        return {"tensorrt_profile": {"opt": [2, 3, 16, 16]}, "engine_memory_mb": 12.5,
                "engine_memory_kind": "tensorrt_activations_for_profile_plus_weights"}

    def close(self):
        pass


def graph_runner_on_cpu(inner, fail_capture: bool = False):
    """CudaGraphRunner whose capture records the call and replays it in Python (no CUDA here): everything
    else, the refill of the captured input buffer included, is the real code."""
    from segdeploy.runtime.cuda_graph import CudaGraphRunner

    class RecordedGraph:
        def __init__(self, static_input):
            self.replay = lambda: inner.run(static_input)

    class CpuGraphRunner(CudaGraphRunner):
        def capture(self, static_input):
            if fail_capture:
                return self._without_graph(RuntimeError("operation not permitted when stream is capturing"))
            return RecordedGraph(static_input), inner.run(static_input)

    return CpuGraphRunner(inner)


@pytest.mark.parametrize("include_transfer", [False, True])
def test_graph_runner_refills_a_tuple_prepared_input(monkeypatch, tmp_path, include_transfer):
    from segdeploy.bench.cell import cell_spec, run_cell
    from segdeploy.bench.timing import WarmupPolicy
    from segdeploy.core.config import BenchConfig
    from segdeploy.runtime.variants import BACKENDS, BackendSpec, Variant

    inner = BoundBuffersRunner()
    monkeypatch.setitem(BACKENDS._entries, "bound", BackendSpec(
        build=lambda variant, ctx: graph_runner_on_cpu(inner), description="test double", reads_graph=False))
    cfg = BenchConfig(backends=[], batch_sizes=[2], iters=4, device="cpu", threads=1, include_transfer=include_transfer)
    row = run_cell(cell_spec(Variant("bound"), tmp_path, cfg, 2, 16, WarmupPolicy(2, 2, 0.05, 2)))
    assert row["status"] == "ok", row
    assert inner.prepared_shapes == [(2, 3, 16, 16)]  # bound once; later batches are copied into the buffer
    assert inner.runs == 1 + 2 + 4  # the capture, then one replay per warm-up and timed iteration
    assert row["cuda_graph"] == "captured" and row["tensorrt_profile"] == {"opt": [2, 3, 16, 16]}
    assert row["memory"]["engine_memory_mb"] == 12.5 and "engine_memory_mb" not in row

    graph = graph_runner_on_cpu(BoundBuffersRunner())
    first = np.full((2, 3, 16, 16), 0.25, np.float32)
    second = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert np.array_equal(graph.infer(first), first * 2)
    np.testing.assert_allclose(graph.infer(second), second.astype(np.float16).astype(np.float32) * 2)
    with pytest.raises(SegdeployError, match="tensor a CUDA graph reads"):
        from segdeploy.runtime.cuda_graph import refill_input

        refill_input(type("NoBuffer", (BoundBuffersRunner,), {"input_buffer": lambda self, p: p})(), (1, 2), second)


def test_failed_graph_capture_runs_without_the_graph_and_says_so(capsys):
    inner = BoundBuffersRunner()
    graph = graph_runner_on_cpu(inner, fail_capture=True)
    images = np.ones((1, 3, 8, 8), np.float32)
    assert np.array_equal(graph.infer(images), images * 2) and np.array_equal(graph.infer(images * 3), images * 6)
    assert graph.row_info()["cuda_graph"] == ("capture failed (RuntimeError: operation not permitted when stream is "
                                              "capturing): ran without the graph")
    assert "running without the graph" in capsys.readouterr().err


def test_polygraphy_loaders_take_our_settings(tmp_path):
    """Polygraphy's loaders are lazy: building them checks every keyword segdeploy passes, without TensorRT."""
    pytest.importorskip("polygraphy", reason="Polygraphy is installed by `make install` and the trt extras")
    from types import SimpleNamespace

    import onnx
    from onnx import TensorProto, helper

    from segdeploy.engines.trt_build import engine_loader

    onnx_file = tmp_path / "model.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 8, 8])])
    onnx.save(helper.make_model(graph), str(onnx_file))
    fake_trt = SimpleNamespace(MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"),
                               BuilderFlag=SimpleNamespace(TF32="tf32"))
    cfg = EngineConfig(opt_batches=[1, 4], max_batch=4, workspace_gb=0.5, optimization_level=2)
    loader = engine_loader(onnx_file, cfg, profile_shapes(cfg, 8), [], tmp_path / "timing.cache", {}, fake_trt)
    assert callable(loader) and type(loader).__name__ == "EngineBytesFromNetwork"
