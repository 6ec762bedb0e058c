"""`segdeploy eval`: metrics against hand-computed values, figures, backends, cross-dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import clone_run, make_folder_dataset
from segdeploy.cli import app
from segdeploy.core.errors import DataError
from segdeploy.core.config import EvalConfig
from segdeploy.evaluation.evaluate import (eval_label, evaluate, image_scores, mosaic_indices, ranked_indices)
from segdeploy.evaluation.figures import figure_pixels
from segdeploy.data.metrics import confusion_matrix, summarize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    """A clone of the tiny run, evaluated once through torch (with figures) and onnxruntime."""
    run = clone_run(trained_run, tmp_path_factory.mktemp("eval") / "tiny")
    torch_result = evaluate(run, EvalConfig(["torch"], figures=True, top_k=3))
    ort_result = evaluate(run, EvalConfig(["onnxruntime"], figures=False))
    return run, torch_result, ort_result


def test_per_class_metrics_match_a_hand_computed_confusion_matrix():
    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 0]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(truth, pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
    result = summarize(cm, ["a", "b", "c"])
    assert result["pixel_accuracy"] == pytest.approx(5 / 7)
    expected = {  # tp / (tp + fp + fn), 2tp / (2tp + fp + fn), tp / (tp + fn)
        "a": (2 / 4, 4 / 6, 2 / 3), "b": (2 / 3, 4 / 5, 1.0), "c": (1 / 2, 2 / 3, 1 / 2),
    }
    for name, (iou, dice, acc) in expected.items():
        assert result["per_class"][name]["iou"] == pytest.approx(iou)
        assert result["per_class"][name]["dice"] == pytest.approx(dice)
        assert result["per_class"][name]["accuracy"] == pytest.approx(acc)
    assert result["miou"] == pytest.approx(np.mean([2 / 4, 2 / 3, 1 / 2]))


def test_image_scores_average_over_classes_in_the_image():
    truth = np.zeros((4, 4), np.uint8)
    truth[:2, :2] = 1
    pred = np.zeros_like(truth)
    pred[:2, :1] = 1  # class 1: IoU 2/4; background: IoU 12/14; class 2 absent: left out
    iou, dice = image_scores(truth, pred, 3)
    assert iou == pytest.approx((2 / 4 + 12 / 14) / 2)
    assert dice == pytest.approx((4 / 6 + 24 / 26) / 2)


def test_ranking_and_mosaic_sample():
    rows = [{"iou": 0.5}, {"iou": None}, {"iou": 0.9}, {"iou": 0.1}, {"iou": 0.7}]
    best, worst = ranked_indices(rows, 2)
    assert best == [2, 4] and worst == [3, 0]
    assert mosaic_indices(3, 6) == [0, 1, 2]
    assert mosaic_indices(100, 5) == [0, 25, 50, 74, 99]


def test_eval_writes_metrics_hd95_and_per_image(evaluated):
    run, result, _ = evaluated
    stored = json.loads(run.metrics.read_text())
    assert stored == json.loads((run.path / "eval" / "torch-fp32-synthetic-val" / "metrics.json").read_text())
    for key in ("pixel_accuracy", "miou", "mean_dice", "per_class", "hd95", "hd95_undefined_pairs",
                "per_image", "dataset", "split", "backend"):
        assert key in stored
    assert stored["dataset"] == "synthetic" and stored["split"] == "val" and stored["backend"] == "torch"
    assert stored["default_result"] and stored["in_domain"]
    assert len(stored["per_image"]) == stored["images"]
    # per-class HD95 and the mean agree with the per-(image, class) values they summarise
    counts = sum(v["hd95_undefined_pairs"] for v in stored["per_class"].values())
    assert counts == stored["hd95_undefined_pairs"]
    assert stored["hd95"] is not None and stored["hd95"] >= 0
    cm = np.array(stored["confusion_matrix"])
    assert cm.sum() == stored["images"] * 64 * 64


def test_figures_are_valid_pngs_of_the_expected_size(evaluated):
    run, result, _ = evaluated
    out = run.path / result["eval_dir"]
    classes = len(result["class_names"])
    rows = min(6, result["images"])
    top = min(3, result["images"])
    expected = {
        "confusion_matrix.png": figure_pixels("confusion_matrix", classes),
        "per_class.png": figure_pixels("per_class", classes),
        "mosaic.png": figure_pixels("mosaic", classes, rows),
        "best.png": figure_pixels("mosaic", classes, top),
        "worst.png": figure_pixels("mosaic", classes, top),
    }
    for name, size in expected.items():
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == size, name
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.std() > 0, f"{name} is blank"
    assert set(result["figures"]) == {"confusion_matrix", "per_class", "mosaic", "best", "worst"}


def test_onnxruntime_eval_matches_torch_eval(evaluated):
    run, torch_result, ort_result = evaluated
    assert ort_result["backend"] == "onnxruntime" and not ort_result["default_result"]
    assert (run.path / "eval" / "onnxruntime-fp32-synthetic-val" / "metrics.json").is_file()
    assert json.loads(run.metrics.read_text())["backend"] == "torch"  # the default result is untouched
    assert ort_result["confusion_matrix"] == torch_result["confusion_matrix"]
    for key in ("pixel_accuracy", "miou", "mean_dice", "hd95", "hd95_undefined_pairs"):
        assert ort_result[key] == torch_result[key], key
    assert ort_result["per_image"] == torch_result["per_image"]


def test_cross_dataset_eval_records_dataset_and_reads_the_runs_classes(evaluated, tmp_path):
    run, _, _ = evaluated
    root = make_folder_dataset(tmp_path / "other", count=10, size=48, num_classes=4)
    result = evaluate(run, EvalConfig(["torch"], dataset="folder", data_root=str(root), figures=False))
    assert result["dataset"] == "folder" and not result["in_domain"] and not result["default_result"]
    # a dataset the model never saw is evaluated on all of its images by default
    assert result["train_dataset"] == "synthetic" and result["images"] == 10 and result["split"] == "all"
    assert result["eval_dir"] == "eval/torch-fp32-folder_other-all"
    val_only = evaluate(run, EvalConfig(["torch"], split="val", dataset="folder", data_root=str(root), figures=False))
    assert val_only["images"] == 1 and val_only["eval_dir"] == "eval/torch-fp32-folder_other-val"  # 12% of 10
    assert json.loads((run.path / result["eval_dir"] / "metrics.json").read_text())["data_root"] == str(root)
    assert json.loads(run.metrics.read_text())["dataset"] == "synthetic"

    binary = make_folder_dataset(tmp_path / "binary", count=4, size=48, num_classes=2)
    with pytest.raises(DataError, match="2 classes but the model .* predicts 4"):
        evaluate(run, EvalConfig(["torch"], dataset="kvasir", data_root=str(binary), figures=False))


def test_eval_label_names_backend_precision_dataset_split():
    from segdeploy.core.config import DataConfig

    assert eval_label("onnxruntime", "fp16", DataConfig(dataset="kvasir", root="/x/y"), "val", True) \
        == "onnxruntime-fp16-kvasir-val"
    assert eval_label("torch", "fp32", DataConfig(dataset="kvasir", root="/x/kvasir-2"), "train", False) \
        == "torch-fp32-kvasir_kvasir-2-train"
    assert eval_label("torch", "fp32", DataConfig(dataset="folder", root="/data/cvc clinic"), "val", False) \
        == "torch-fp32-folder_cvc_clinic-val"


def test_cli_eval_and_its_errors(evaluated, tmp_path):
    run, _, _ = evaluated
    cli = CliRunner()
    result = cli.invoke(app, ["eval", str(run.path), "--backends", "onnxruntime", "--no-figures", "--max-images", "2"])
    assert result.exit_code == 0, result.output
    assert "HD95 px" in result.output
    stored = json.loads((run.path / "eval" / "onnxruntime-fp32-synthetic-val" / "metrics.json").read_text())
    assert stored["images"] == 2
    result = cli.invoke(app, ["eval", str(run.path), "--dataset", "folder", "--data-root", str(tmp_path / "none")])
    assert result.exit_code == 2 and "data root not found" in result.output
