"""TensorRT on a GPU (marked `gpu` and `trt`: skipped where either is missing; NOT EXECUTED in this project so
far). U-Net R18 and DeepLabV3+ R50 at 256 px, fp32/fp16/int8 engines built through Polygraphy at builder
optimisation level 1 (quick builds), parity with torch, the CUDA-graph variant with and without the
host transfers, engine reuse, a foreign manifest refused, and Polygraphy's own TrtRunner as a second opinion.
`benchmarks/gpu_check.sh` runs these with the `gpu` tests and a bench sweep."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from conftest import tiny_config
from segdeploy.core import fileio
from segdeploy.core.config import BenchConfig, EngineConfig, ExportConfig
from segdeploy.core.errors import SegdeployError
from segdeploy.core.rundir import RunDir
from segdeploy.runtime.variants import RuntimeContext, load_runner, parse_variant

PRECISIONS = ["fp32", "fp16", "int8"]
ENGINE = EngineConfig(opt_batches=[1, 2], max_batch=2, optimization_level=1)
SIZE = 256
# The tiny models have near-tied logits: reduced precisions are judged by argmax agreement on most pixels,
# as tests/test_runtime.py's RunnerContract does; fp32 (TF32 off) must match torch's logits.
AGREEMENT = {"fp32": 0.999, "fp16": 0.9, "int8": 0.9}


@pytest.fixture(scope="module", params=[("unet", "resnet18"), ("deeplabv3plus", "resnet50")], ids=["unet-r18", "dlv3p-r50"])
def engine_run(request, tmp_path_factory):
    """A few CUDA training steps at 256 px, the three graphs, and their engines (built once per model)."""
    from segdeploy.engines.trt_build import build_engines
    from segdeploy.export.onnx import export_graphs
    from segdeploy.training.loop import train

    model, encoder = request.param
    cfg = tiny_config(data={"size": SIZE, "synthetic_images": 24, "max_images": 8},
                      model={"name": model, "encoder": encoder}, train={"device": "cuda", "max_steps": 4})
    run = train(cfg, tmp_path_factory.mktemp("trt") / f"{model}-{encoder}")
    export_graphs(run, ExportConfig(precisions=PRECISIONS, calib_images=4, int8_quantizer="ort"))  # TensorRT's graph
    built = build_engines(run, PRECISIONS, ENGINE)
    return run, built


@pytest.mark.gpu
@pytest.mark.trt
def test_engines_build_through_polygraphy_and_are_reused(engine_run):
    from segdeploy.engines.tensorrt import manifest_path
    from segdeploy.engines.trt_build import build_engines

    run, built = engine_run
    assert all(flag for _, flag in built.values())
    manifests = {p: fileio.read_json(manifest_path(run, p)) for p in PRECISIONS}
    for precision, manifest in manifests.items():
        assert manifest["built_with"].startswith("polygraphy") and manifest["build_seconds"] > 0
        assert manifest["tf32_flag"] is False and manifest["tf32"] is False  # fp32 means FP32
        assert [p["opt"][0] for p in manifest["profiles"]] == [1, 2]
        assert (run.engines_dir / manifest["timing_cache_file"]).stat().st_size > 0
    assert manifests["fp32"]["timing_cache"] == "new" and manifests["int8"]["timing_cache"] == "loaded"
    again = build_engines(run, PRECISIONS, ENGINE)
    assert not any(flag for _, flag in again.values())


@pytest.mark.gpu
@pytest.mark.trt
def test_engines_match_torch(engine_run):
    from segdeploy.evaluation.parity import measure_variants, validation_set

    run, _ = engine_run
    dataset, _ = validation_set(run, 6)
    variants = [parse_variant("tensorrt", p) for p in PRECISIONS]
    rows, _ = measure_variants(run, variants, dataset, RuntimeContext(run, "cuda"), batch_size=2)
    for row in rows:
        assert row["status"] == "ok", row
        assert row["argmax_agreement"] >= AGREEMENT[row["precision"]], row
    fp32 = next(r for r in rows if r["precision"] == "fp32")
    assert fp32["max_abs_err"] <= 1e-2, fp32


@pytest.mark.gpu
@pytest.mark.trt
def test_graph_variant_with_and_without_transfers(engine_run):
    from segdeploy.bench.cell import cell_input, cell_spec, run_cell
    from segdeploy.bench.timing import WarmupPolicy
    from segdeploy.runtime.variants import Variant

    run, _ = engine_run
    images = cell_input(2, SIZE)
    plain = load_runner("tensorrt", run, "fp16", device="cuda").infer(images)
    graph = load_runner("tensorrt+graph", run, "fp16", device="cuda")
    np.testing.assert_allclose(graph.infer(images), plain, rtol=0, atol=1e-4)  # same engine, other context
    np.testing.assert_allclose(graph.infer(images[::-1].copy()), plain[::-1], rtol=0, atol=1e-4)  # refilled
    for include_transfer in (False, True):
        cfg = BenchConfig(batch_sizes=[2], iters=10, device="cuda", include_transfer=include_transfer)
        row = run_cell(cell_spec(Variant("tensorrt", ("graph",), "fp16"), run.path, cfg, 2, SIZE,
                                 WarmupPolicy(3, 3, 0.5, 10)))
        assert row["status"] == "ok", row
        assert row["cuda_graph"] == "captured" and row["opt_batch"] == 2 and row["tuned_for_batch"] is True
        assert row["memory"]["engine_memory_mb"] > 0 and row["timer"] == "cuda_events"


@pytest.mark.gpu
@pytest.mark.trt
def test_polygraphy_trt_runner_agrees_with_ours(engine_run, monkeypatch):
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from segdeploy.engines.tensorrt import engine_path

    run, _ = engine_run
    # Polygraphy loads libcudart itself, from LD_LIBRARY_PATH or nvidia/cuda_runtime (CUDA 12 wheels); CUDA 13
    # wheels keep it under nvidia/cu13/lib: point it at the one torch has loaded
    with open("/proc/self/maps") as maps:
        loaded = sorted({line.split()[-1].rsplit("/", 1)[0] for line in maps if "libcudart.so" in line})
    monkeypatch.setenv("LD_LIBRARY_PATH", ":".join([*loaded, *filter(None, [os.environ.get("LD_LIBRARY_PATH")])]))
    images = np.random.default_rng(3).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    for precision in PRECISIONS:
        ours = load_runner("tensorrt", run, precision, device="cuda")
        with TrtRunner(EngineFromBytes(engine_path(run, precision).read_bytes())) as theirs:
            reference = theirs.infer({ours.input_name: images})[ours.output_name]
        np.testing.assert_allclose(ours.infer(images), np.asarray(reference, np.float32), rtol=0, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.trt
def test_an_engine_from_another_gpu_is_refused(engine_run, tmp_path):
    from segdeploy.engines.tensorrt import manifest_path

    run, _ = engine_run
    copy = RunDir(tmp_path / "copy")
    shutil.copytree(run.path, copy.path)
    manifest = fileio.read_json(manifest_path(copy, "fp32"))
    fileio.write_json(manifest_path(copy, "fp32"), {**manifest, "gpu_name": "NVIDIA L4", "compute_capability": "8.9"})
    with pytest.raises(SegdeployError, match="gpu_name: engine 'NVIDIA L4'") as info:
        load_runner("tensorrt", copy, "fp32", device="cuda")
    assert "--rebuild" in info.value.hint


@pytest.mark.gpu
def test_failed_cuda_graph_capture_falls_back_on_a_gpu():
    """A runner that synchronises inside `run` cannot be captured: the graph runner says so and runs it eagerly."""
    import torch

    from segdeploy.runtime.base import Runner
    from segdeploy.runtime.cuda_graph import CudaGraphRunner

    class SyncingRunner(Runner):
        supports_cuda_graph = stream_ordered = True

        def prepare(self, images):
            return torch.from_numpy(images).to(self.device)

        def run(self, prepared):
            torch.cuda.synchronize()  # not allowed while a stream is captured
            return prepared * 2

        def to_numpy(self, output):
            return output.cpu().numpy()

    runner = CudaGraphRunner(SyncingRunner("fp32", "cuda"))
    images = np.ones((2, 3, 8, 8), np.float32)
    np.testing.assert_array_equal(runner.infer(images), images * 2)
    np.testing.assert_array_equal(runner.infer(images * 3), images * 6)
    assert runner.row_info()["cuda_graph"].startswith("capture failed (")
