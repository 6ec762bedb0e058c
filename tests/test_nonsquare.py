"""Non-square inputs (`--size 32x64`, `size = [32, 64]`): data, training, export with static H, W and a
dynamic batch, precision graphs, parity on ONNX Runtime, bench input and TensorRT profile shapes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from segdeploy.cli import app
from segdeploy.core.config import ExportConfig, ParityConfig, load_config
from segdeploy.core.errors import ConfigError
from segdeploy.core.rundir import RunDir
from segdeploy.core.size import input_hw, parse_size, size_label
from segdeploy.models.registry import validate_model_config

HEIGHT, WIDTH = 32, 64


def test_sizes_parse_and_label():
    assert parse_size("256") == 256 and parse_size("512x1024") == [512, 1024] and parse_size("64x64") == 64
    assert input_hw(96) == (96, 96) and input_hw([512, 1024]) == (512, 1024)
    assert size_label([512, 1024]) == "512x1024" and size_label(256) == "256"
    for bad in ("x", "1x2x3", "big"):
        with pytest.raises(ConfigError, match="HEIGHTxWIDTH"):
            parse_size(bad)
    with pytest.raises(ConfigError, match=r"\[height, width\]"):
        input_hw([1, 2, 3])


def test_the_size_check_names_the_offending_side():
    cfg = tiny_config().model
    with pytest.raises(ConfigError, match="input width 100 is not a multiple of 32, which unet needs .try 96"):
        validate_model_config(cfg, [64, 100])
    with pytest.raises(ConfigError, match="input height 48 is not a multiple of 32"):
        validate_model_config(cfg, [48, 64])
    with pytest.raises(ConfigError, match="input size 50 is not a multiple"):
        validate_model_config(cfg, 50)


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory) -> RunDir:
    base = tmp_path_factory.mktemp("wide")
    result = CliRunner().invoke(app, [
        "train", "--size", f"{HEIGHT}x{WIDTH}", "--max-images", "8", "--epochs", "1", "--batch-size", "4",
        "--max-steps", "1", "--device", "cpu", "--lr", "1e-3", "--no-amp", "--augment", "standard",
        "--output", str(base / "run")])
    assert result.exit_code == 0, result.output
    return RunDir(base / "run")


def test_training_and_toml_keep_height_and_width(wide_run, tmp_path):
    cfg = wide_run.load_config()
    assert cfg.data.size == [HEIGHT, WIDTH]
    (tmp_path / "wide.toml").write_text("[data]\nsize = [512, 1024]\n")
    assert load_config(tmp_path / "wide.toml").data.size == [512, 1024]
    from segdeploy.data.registry import build_dataset

    dataset = build_dataset(cfg.data, "train")
    assert dataset.images.shape[1:] == (HEIGHT, WIDTH, 3) and dataset.masks.shape[1:] == (HEIGHT, WIDTH)
    image, mask = dataset[0]  # augmented: still the input size
    assert image.shape == (3, HEIGHT, WIDTH) and mask.shape == (HEIGHT, WIDTH)


def test_export_precisions_and_parity_on_onnxruntime(wide_run):
    from segdeploy.evaluation.parity import run_parity
    from segdeploy.export.onnx import export_graphs

    paths = export_graphs(wide_run, ExportConfig(precisions=["fp32", "fp16"]))
    for path in paths.values():
        graph = onnx.load(str(path))
        dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["batch", 3, HEIGHT, WIDTH]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(paths["fp32"]), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": np.zeros((3, 3, HEIGHT, WIDTH), np.float32)})
    assert logits.shape == (3, 4, HEIGHT, WIDTH)  # any batch, the run's height and width
    report = run_parity(wide_run, ParityConfig(["onnxruntime"], precisions=["fp32", "fp16"], batch_size=3))
    assert [row["precision"] for row in report["results"]] == ["fp32", "fp16"]
    assert all(row["passed"] for row in report["results"]), report["results"]
    fp32 = report["results"][0]
    assert fp32["argmax_agreement"] >= 0.999 and fp32["max_abs_err"] < 1e-3


def test_bench_input_and_tensorrt_profile_are_height_by_width(wide_run):
    from segdeploy.bench.cell import cell_input
    from segdeploy.core.config import EngineConfig
    from segdeploy.engines.tensorrt import profile_shapes

    assert cell_input(2, wide_run.load_config().data.size).shape == (2, 3, HEIGHT, WIDTH)
    shapes = profile_shapes(EngineConfig(min_batch=1, opt_batches=[1, 4], max_batch=8), [HEIGHT, WIDTH])
    assert shapes == [{"min": [1, 3, HEIGHT, WIDTH], "opt": [1, 3, HEIGHT, WIDTH], "max": [1, 3, HEIGHT, WIDTH]},
                      {"min": [2, 3, HEIGHT, WIDTH], "opt": [4, 3, HEIGHT, WIDTH], "max": [8, 3, HEIGHT, WIDTH]}]


def test_eval_at_the_runs_height_and_width(wide_run):
    from segdeploy.core.config import EvalConfig
    from segdeploy.evaluation.evaluate import evaluate

    result = evaluate(wide_run, EvalConfig(figures=True, top_k=1))
    assert result["size"] == [HEIGHT, WIDTH] and len(result["per_image"]) == result["images"]
    assert np.asarray(result["confusion_matrix"]).sum() > 0


def test_sam2_feature_cache_decodes_to_height_by_width():
    pytest.importorskip("sam2")
    import torch

    from segdeploy.core.config import ModelConfig
    from segdeploy.models.registry import build_model
    from segdeploy.training.feature_cache import HeadFromFeatures, feature_shapes

    model = build_model(ModelConfig(name="sam2", encoder="hiera-t", encoder_weights="none"), 3, [64, 128]).eval()
    images = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        logits = model(images)
        shapes = feature_shapes(model, [64, 128], "cpu")
        rows = torch.cat([f.reshape(2, -1) for f in model.encode(images)], 1)
        from_cache = HeadFromFeatures(model, shapes, [64, 128]).eval()(rows)
    assert logits.shape == (2, 3, 64, 128) and shapes == [[256, 4, 8]]
    torch.testing.assert_close(from_cache, logits, atol=1e-4, rtol=1e-4)
