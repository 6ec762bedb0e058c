"""Class counts and void labels against what masks and outputs can hold (uint8 ids, 255 = void), checked
through the CLI and TOML before any work: one line, exit 2, the limit named, no run directory made."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.data.metrics import confusion_matrix
from segdeploy.data.preprocess import VOID_LABEL
from segdeploy.evaluation.figures import palette
from conftest import make_folder_dataset, write_image

FAST = ["--size", "32", "--max-images", "4", "--epochs", "1", "--batch-size", "4", "--max-steps", "1",
        "--device", "cpu", "--threads", "2", "--no-amp"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_refused(result, out: Path, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "OverflowError" not in result.output
    line = " ".join(result.output.split())
    assert line.startswith("error: "), result.output
    for needle in needles:
        assert needle in line, (needle, result.output)
    assert not out.exists()  # refused before any work


@pytest.mark.parametrize("count", [300, 256, 1, 0])
def test_class_count_outside_what_a_mask_holds(tmp_path, count):
    """300 was an OverflowError traceback; 256 trained with class 255 being void; 0 and 1 segment nothing."""
    out = tmp_path / "run"
    result = invoke("train", "--dataset", "synthetic", "--num-classes", count, *FAST, "--output", out)
    assert_refused(result, out, f"data.num_classes must be in [2, 255]", "uint8 masks, 255 = void", f"got {count}")


def test_class_count_in_toml_gets_the_same_message(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[data]\ndataset = 'synthetic'\nnum_classes = 300\n")
    out = tmp_path / "run"
    assert_refused(invoke("train", "--config", config, "--output", out), out,
                   str(config), "data.num_classes must be in [2, 255]", "got 300")
    config.write_text("[model]\nnum_classes = 1\n")
    assert_refused(invoke("train", "--config", config, "--output", out), out, "model.num_classes must be in [2, 255]")


def test_class_count_in_a_study_file(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text("[study]\nname = 's'\n[data]\ndataset = 'synthetic'\nnum_classes = 256\n")
    result = invoke("study", study, "--dry-run")
    assert result.exit_code == 2 and "data.num_classes must be in [2, 255]" in " ".join(result.output.split())


def test_void_label_that_is_a_class_id(tmp_path):
    root = make_folder_dataset(tmp_path / "d", count=4, num_classes=3)
    out = tmp_path / "run"
    result = invoke("train", "--dataset", "folder", "--data-root", root, "--num-classes", 3, "--void-label", 1,
                    *FAST, "--output", out)
    assert_refused(result, out, "data.void_label 1 is a class id of the 3 classes (ids 0..2)", "classes.json")
    # a binary dataset's background is class 0: --void-label 0 would ignore every background pixel
    result = invoke("train", "--dataset", "kvasir", "--data-root", root, "--void-label", 0, *FAST, "--output", out)
    assert_refused(result, out, "data.void_label 0 is a class id of the 2 classes")


def test_class_count_a_dataset_does_not_have(tmp_path):
    root = make_folder_dataset(tmp_path / "d", count=4)
    out = tmp_path / "run"
    result = invoke("train", "--dataset", "kvasir", "--data-root", root, "--num-classes", 3, *FAST, "--output", out)
    assert_refused(result, out, "dataset kvasir has 2 classes, got data.num_classes = 3")


@pytest.mark.parametrize("classes, needle", [
    ([f"c{i}" for i in range(256)], "lists 256 classes, but at most 255 fit"),
    ([{"name": "a", "id": 0}, {"name": "b", "id": 70000}], "class 'b' id must be a mask value, an integer 0..65535, got 70000"),
    ([{"name": "a", "id": 0}, {"name": "b", "id": "7"}], "class 'b' id must be a mask value"),
    ([{"name": "a", "id": -1}, {"name": "b"}], "got -1"),
])
def test_class_map_ids_and_count_beyond_what_masks_hold(tmp_path, classes, needle):
    root = make_folder_dataset(tmp_path / "d", count=4)
    (root / "classes.json").write_text(json.dumps({"classes": classes}))
    out = tmp_path / "run"
    result = invoke("train", "--dataset", "folder", "--data-root", root, *FAST, "--output", out)
    assert_refused(result, out, str(root / "classes.json"), needle)


def test_confusion_matrix_and_palette_at_the_largest_class_count():
    """255 classes: ids 0..254 and void 255 in uint8; every pixel counted once, void never."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (4, 32, 32)).astype(np.uint8)  # 255 = void among them
    pred = rng.integers(0, 255, (4, 32, 32)).astype(np.uint8)
    cm = confusion_matrix(truth, pred, 255)
    assert cm.shape == (255, 255) and cm.sum() == int((truth != VOID_LABEL).sum())
    assert cm[254].sum() == int((truth == 254).sum())
    assert palette(255).shape == (255, 3) and palette(255).dtype == np.uint8


def test_largest_class_count_trains_and_evaluates(tmp_path):
    """255 classes end to end: predictions (uint8 label maps), confusion matrix, per-class table and figures."""
    out = tmp_path / "run"
    result = invoke("train", "--dataset", "synthetic", "--num-classes", 255, *FAST, "--output", out)
    assert result.exit_code == 0, result.output
    result = invoke("eval", out, "--top-k", 1)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "eval" / "torch-fp32-synthetic-val" / "metrics.json").read_text())
    assert len(metrics["per_class"]) == 255 and np.asarray(metrics["confusion_matrix"]).shape == (255, 255)
    # figures stay readable (and quick): a legend of the classes the masks show, every 6th class named on the axes
    from PIL import Image

    from segdeploy.evaluation.figures import figure_pixels

    mosaic = Image.open(out / metrics["eval_dir"] / "mosaic.png")
    assert mosaic.size == figure_pixels("mosaic", 255, rows=4) and mosaic.size[1] < 1200


def test_a_mosaic_legend_past_24_classes_names_the_largest_classes_of_its_masks():
    from segdeploy.evaluation.figures import legend_classes

    truths = np.repeat(np.arange(30, dtype=np.uint8), np.arange(1, 31))[None]  # class c covers c + 1 pixels
    preds = np.full_like(truths, 200)
    assert legend_classes(truths, preds, 255) == [*range(7, 30), 200]  # 200 covers most, then 29, 28, ..., 7
    assert legend_classes(truths, preds, 24) == list(range(24))  # up to 24 classes: all, shown or not
    assert legend_classes(truths[:, :3], truths[:, :3], 255) == [0, 1]  # only classes the masks hold


def test_index_masks_of_a_255_class_folder_dataset(tmp_path):
    """A stored id of 254 is the last class; 255 stays void."""
    from segdeploy.core.config import DataConfig
    from segdeploy.data.registry import build_dataset

    root = tmp_path / "d"
    for i in range(3):
        labels = np.full((16, 16), 254, np.uint8)
        labels[:4] = 255
        labels[8:] = i
        write_image(root / "images" / f"a{i}.png", np.zeros((16, 16, 3), np.uint8))
        write_image(root / "masks" / f"a{i}.png", labels)
    data = build_dataset(DataConfig(dataset="folder", root=str(root), size=16, num_classes=255), "all")
    assert data.num_classes == 255 and set(np.unique(data.masks)) == {0, 1, 2, 254, 255}
