"""The deploy graph (`export --deploy`): uint8 NHWC images in, class-index mask out, for every precision;
the `+deploy` runtime variant in parity, eval and bench; TensorRT's part decided on the CPU."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.core import fileio
from segdeploy.core.errors import ConfigError, SegdeployError
from segdeploy.core.rundir import RunDir
from segdeploy.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize
from segdeploy.evaluation.parity import validation_set
from segdeploy.export.deploy_graph import build_deploy_graph, check_outputs, read_metadata
from segdeploy.export.sidecar import checked_graph
from segdeploy.runtime.base import infer_images, predicted_labels
from segdeploy.runtime.variants import load_runner, parse_variant, artifact_path

from conftest import clone_run

PRECISIONS = ("fp32", "fp16", "int8")


def ort_session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def deploy_run(trained_run, tmp_path_factory):
    """The tiny run exported through the CLI with deploy graphs (mask and probs) of every precision."""
    run = clone_run(trained_run, tmp_path_factory.mktemp("deploy") / "run")
    result = CliRunner().invoke(app, ["export", str(run.path), "--precision", ",".join(PRECISIONS),
                                      "--deploy-outputs", "mask,probs", "--calib-images", "8"])
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def val_images(deploy_run):
    dataset, _ = validation_set(deploy_run, None)
    return dataset.image_batch(range(len(dataset)))


def test_export_writes_deploy_graphs_with_sidecars_and_metadata(deploy_run):
    cfg = deploy_run.load_config()
    size = cfg.data.size
    for precision in PRECISIONS:
        path = checked_graph(deploy_run, precision, deploy=True)  # its sidecar agrees with file and run
        assert path == deploy_run.deploy_onnx_path(precision) and path.name.endswith(".deploy.onnx")
        sidecar = fileio.read_json(deploy_run.deploy_onnx_sidecar(precision))
        plain = fileio.read_json(deploy_run.onnx_sidecar(precision))
        assert sidecar["graph"] == "deploy" and plain["graph"] == "plain"
        assert sidecar["source"] == deploy_run.onnx_path(precision).name
        assert sidecar["source_sha256"] == plain["sha256"]
        assert sidecar["inputs"] == [{"name": "images", "dtype": "uint8", "shape": ["batch", size, size, 3]}]
        assert sidecar["outputs"] == [{"name": "mask", "dtype": "uint8", "shape": ["batch", size, size]},
                                      {"name": "probs", "dtype": "float32", "shape": ["batch", 4, size, size]}]
        model = onnx.load(str(path))
        (graph_input,), outputs = model.graph.input, model.graph.output
        assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == ["batch", size, size, 3]
        assert [o.name for o in outputs] == ["mask", "probs"]
        assert outputs[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
        meta = read_metadata(path)
        assert meta["class_names"] == plain["class_names"] and meta["input_size"] == size
        assert meta["mean"] == list(IMAGENET_MEAN) and meta["std"] == list(IMAGENET_STD)
        assert meta["void_label"] == 255 and meta["precision"] == precision
        assert meta["checkpoint_sha256"] == fileio.sha256_file(deploy_run.checkpoint("best"))
        assert "palette" not in meta  # synthetic data: no class map
        assert sidecar["metadata_props"] == sorted(p.key for p in model.metadata_props if p.key.startswith("segdeploy."))


def test_fp32_mask_is_the_argmax_of_the_plain_graph(deploy_run, val_images):
    logits = ort_session(deploy_run.onnx_path("fp32")).run(None, {"images": normalize(val_images)})[0]
    mask, probs = ort_session(deploy_run.deploy_onnx_path("fp32")).run(None, {"images": val_images})
    assert mask.dtype == np.uint8 and mask.shape == val_images.shape[:3]
    assert np.array_equal(mask, logits.argmax(1))  # 100%: the in-graph preprocessing is normalize()'s
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, shifted / shifted.sum(1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_deploy_runners_take_uint8_and_return_masks(deploy_run, val_images, backend):
    pytest.importorskip(backend)
    for precision in ("fp16", "int8"):
        plain, deployed = load_runner(backend, deploy_run, precision), load_runner(f"{backend}+deploy", deploy_run, precision)
        try:
            assert (plain.input_format, plain.output_format) == ("normalized", "logits")
            assert (deployed.input_format, deployed.output_format) == ("uint8_nhwc", "mask")
            expected = predicted_labels(plain, infer_images(plain, val_images))
            mask = infer_images(deployed, val_images)
        finally:
            plain.close()
            deployed.close()
        assert mask.dtype == np.uint8
        # the same quantised/halved graph inside: the masks agree within the parity tolerance of the precision
        assert (mask == expected).mean() >= 0.98


def test_parity_compares_masks_of_deploy_variants(deploy_run):
    pytest.importorskip("openvino")
    result = CliRunner().invoke(app, ["parity", str(deploy_run.path), "--backends",
                                      "onnxruntime,onnxruntime+deploy,openvino+deploy", "--precision", "fp32,int8"])
    assert result.exit_code in (0, 1), result.output  # 1: the tiny model's int8 rows may miss the tolerance
    assert "n/a (mask)" in result.output
    rows = {(r["variant"], r["precision"]): r for r in fileio.read_json(deploy_run.parity)["results"]}
    for variant in ("onnxruntime+deploy", "openvino+deploy"):
        row = rows[(variant, "fp32")]
        assert row["status"] == "ok" and row["compared"] == "masks" and row["max_abs_err"] is None
        assert row["argmax_agreement"] == 1.0 and row["passed"] is True
        assert row["artifact"] == "export/model.deploy.onnx"
    for precision in ("fp32", "int8"):  # the same graph inside: the same pixels, the same mIoU
        plain, deployed = rows[("onnxruntime", precision)], rows[("onnxruntime+deploy", precision)]
        assert deployed["argmax_agreement"] == plain["argmax_agreement"]
        assert deployed["miou"] == pytest.approx(plain["miou"], abs=1e-12)


def test_eval_and_bench_run_the_deploy_variant(deploy_run):
    runner = CliRunner()
    evaluated = runner.invoke(app, ["eval", str(deploy_run.path), "--backend", "onnxruntime+deploy", "--no-figures"])
    assert evaluated.exit_code == 0, evaluated.output
    plain = runner.invoke(app, ["eval", str(deploy_run.path), "--backend", "onnxruntime", "--no-figures"])
    assert plain.exit_code == 0, plain.output
    metrics = {name: fileio.read_json(deploy_run.path / "eval" / f"{name}-fp32-synthetic-val" / "metrics.json")
               for name in ("onnxruntime", "onnxruntime+deploy")}
    assert metrics["onnxruntime+deploy"]["confusion_matrix"] == metrics["onnxruntime"]["confusion_matrix"]
    bench = runner.invoke(app, ["bench", str(deploy_run.path), "--backends", "onnxruntime+deploy", "--batch-sizes", "2",
                                "--iters", "3", "--warmup", "2", "--max-warmup", "4", "--in-process",
                                "--include-transfer", "--no-accuracy"])
    assert bench.exit_code == 0, bench.output
    (row,) = fileio.read_json(deploy_run.bench)["results"]
    assert row["status"] == "ok" and row["variant"] == "onnxruntime+deploy" and row["include_transfer"] is True
    assert (row["input_format"], row["output_format"]) == ("uint8_nhwc", "mask")


def test_a_tampered_or_missing_deploy_graph_is_refused(deploy_run, tmp_path):
    copy = RunDir(tmp_path / "copy")
    shutil.copytree(deploy_run.path, copy.path, symlinks=True)
    sidecar = fileio.read_json(copy.deploy_onnx_sidecar("fp32"))
    fileio.write_json(copy.deploy_onnx_sidecar("fp32"), {**sidecar, "sha256": "0" * 64})
    with pytest.raises(SegdeployError, match="sha256") as info:
        load_runner("onnxruntime+deploy", copy, "fp32")
    assert "--deploy" in info.value.hint
    fileio.write_json(copy.deploy_onnx_sidecar("fp32"), {**sidecar, "graph": "plain"})
    with pytest.raises(SegdeployError, match="describes a plain graph"):
        checked_graph(copy, "fp32", deploy=True)
    copy.deploy_onnx_path("fp32").unlink()
    result = CliRunner().invoke(app, ["parity", str(copy.path), "--backends", "onnxruntime+deploy"])
    assert result.exit_code == 2 and "export --precision fp32 --deploy" in result.output


def test_export_without_deploy_removes_the_stale_deploy_graph(deploy_run, tmp_path):
    from segdeploy.core.config import ExportConfig
    from segdeploy.export.onnx import export_graphs

    copy = RunDir(tmp_path / "copy")
    shutil.copytree(deploy_run.path, copy.path, symlinks=True)
    export_graphs(copy, ExportConfig(precisions=["fp32"], exporter="torchscript", simplify=False))  # the cheap way
    assert not copy.deploy_onnx_path("fp32").exists() and not copy.deploy_onnx_sidecar("fp32").exists()
    assert copy.deploy_onnx_path("int8").exists()  # a precision not exported again keeps its pair


def test_deploy_outputs_are_checked_before_any_work(deploy_run):
    assert check_outputs(["probs", "mask"]) == ("mask", "probs")
    for bad in (["probs"], ["mask", "logits"], []):
        with pytest.raises(ConfigError, match="--deploy-outputs"):
            check_outputs(bad)
    result = CliRunner().invoke(app, ["export", str(deploy_run.path), "--deploy-outputs", "logits"])
    assert result.exit_code == 2 and "--deploy-outputs must be mask or mask,probs" in result.output


def test_more_than_255_classes_give_an_int32_mask(tmp_path):
    import torch

    from segdeploy.export.onnx import export_onnx

    plain, deployed = tmp_path / "plain.onnx", tmp_path / "plain.deploy.onnx"
    torch.manual_seed(0)
    export_onnx(torch.nn.Conv2d(3, 300, 1).eval(), plain, 8)
    details = build_deploy_graph(plain, deployed, IMAGENET_MEAN, IMAGENET_STD)
    assert details["mask_dtype"] == "int32" and details["outputs"][0]["dtype"] == "int32"
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    (mask,) = ort_session(deployed).run(None, {"images": images})
    logits = ort_session(plain).run(None, {"images": normalize(images)})[0]
    assert mask.dtype == np.int32 and mask.max() > 255
    assert np.array_equal(mask, logits.argmax(1))


def test_tensorrt_deploy_engine_decisions_on_cpu(deploy_run):
    from segdeploy.core.config import EngineConfig
    from segdeploy.engines.tensorrt import deploy_unavailable, engine_path, manifest_path, profile_shapes

    assert "uint8" in deploy_unavailable("8.6.1") and deploy_unavailable("10.3.0") is None
    assert deploy_unavailable("9.2.0") is None
    assert profile_shapes(EngineConfig(opt_batches=[2], max_batch=4), [32, 48], deploy=True) == [
        {"min": [1, 32, 48, 3], "opt": [2, 32, 48, 3], "max": [4, 32, 48, 3]}]
    assert engine_path(deploy_run, "int8", deploy=True).name == "int8.deploy.plan"
    assert manifest_path(deploy_run, "int8", deploy=True).name == "int8.deploy.json"
    variant = parse_variant("tensorrt+graph+deploy", "fp16")
    assert variant.name == "tensorrt+graph+deploy"
    assert artifact_path(variant, deploy_run).name == "fp16.deploy.plan"
    assert json.loads(json.dumps(variant.option("deploy"))) is True
