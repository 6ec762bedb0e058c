"""Class maps: --void-label, classes.json names/palette/ids, RGB colour-coded masks, figures in its colours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import write_image
from segdeploy.cli import app
from segdeploy.core.config import DataConfig
from segdeploy.core.errors import ConfigError, DataError
from segdeploy.data.registry import build_dataset

PALETTE = [[0, 0, 0], [250, 40, 40], [40, 200, 90]]  # background, polyp, tool
VOID_COLOR = [255, 255, 255]


def rgb_dataset(root: Path, count: int = 6, size: int = 32, stray: tuple[int, int, int] | None = None) -> Path:
    """Colour-coded masks: left third class 1, bottom band class 2, a white (void) corner."""
    rng = np.random.default_rng(0)
    for i in range(count):
        labels = np.zeros((size, size), np.uint8)
        labels[:, : size // 3] = 1
        labels[3 * size // 4:, :] = 2
        rgb = np.array(PALETTE, np.uint8)[labels]
        rgb[:4, -4:] = VOID_COLOR
        if stray is not None and i == 2:
            rgb[10, 20] = stray
        write_image(root / "images" / f"im{i}.png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        write_image(root / "masks" / f"im{i}.png", rgb)
    classes = [{"name": n, "color": c} for n, c in zip(("background", "polyp", "tool"), PALETTE)]
    (root / "classes.json").write_text(json.dumps({"classes": classes, "void": {"colors": [VOID_COLOR]}}))
    return root


def test_rgb_masks_are_decoded_through_the_palette(tmp_path):
    root = rgb_dataset(tmp_path / "d")
    train = build_dataset(DataConfig(dataset="folder", root=str(root), size=32, val_fraction=0.25), "train")
    assert train.class_names == ["background", "polyp", "tool"] and train.num_classes == 3
    np.testing.assert_array_equal(train.palette, np.array(PALETTE, np.uint8))
    mask = train.masks[0]
    assert mask[10, 2] == 1 and mask[30, 20] == 2 and mask[10, 15] == 0 and (mask[:4, -4:] == 255).all()


def test_unknown_colour_is_a_one_line_error_naming_file_and_colour(tmp_path):
    root = rgb_dataset(tmp_path / "d", stray=(1, 2, 3))
    result = CliRunner().invoke(app, ["train", "--dataset", "folder", "--data-root", str(root), "--size", "32",
                                      "--output", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "im2.png" in lines[0] and "(1, 2, 3)" in lines[0] and "palette" in lines[0]


def test_void_label_maps_to_255_and_ids_map_to_classes(tmp_path):
    root = tmp_path / "camvid"
    for i in range(4):
        labels = np.full((16, 16), 3, np.uint8)
        labels[:8] = 7
        labels[:, :4] = 11  # CamVid's void
        write_image(root / "images" / f"a{i}.png", np.zeros((16, 16, 3), np.uint8))
        write_image(root / "masks" / f"a{i}.png", labels)
    cfg = DataConfig(dataset="folder", root=str(root), size=16, num_classes=11, void_label=11, val_fraction=0.25)
    mask = build_dataset(cfg, "train").masks[0]
    assert set(np.unique(mask)) == {3, 7, 255} and (mask[:, :4] == 255).all()
    with pytest.raises(DataError, match="class id 11"):  # without --void-label, 11 is an unknown class
        build_dataset(DataConfig(dataset="folder", root=str(root), size=16, num_classes=11), "train")
    # a class map with stored ids: 3 -> class 0, 7 -> class 1, 11 -> void
    (tmp_path / "ids.json").write_text(json.dumps({"classes": [{"name": "sky", "id": 3}, {"name": "road", "id": 7}]}))
    cfg = DataConfig(dataset="folder", root=str(root), size=16, classes=str(tmp_path / "ids.json"), void_label=11)
    mapped = build_dataset(cfg, "val").masks[0]
    assert set(np.unique(mapped)) == {0, 1, 255} and mapped[12, 8] == 0 and mapped[2, 8] == 1


def test_index_mask_with_an_unlisted_id_names_file_and_value(tmp_path):
    root = tmp_path / "d"
    for i in range(3):
        write_image(root / "images" / f"a{i}.png", np.zeros((8, 8, 3), np.uint8))
        write_image(root / "masks" / f"a{i}.png", np.full((8, 8), 5 if i == 1 else 0, np.uint8))
    (root / "classes.json").write_text(json.dumps({"classes": ["bg", "fg"]}))
    with pytest.raises(DataError, match=r"a1\.png has value 5, which .*classes.json does not list"):
        build_dataset(DataConfig(dataset="folder", root=str(root), size=8, split_seed=0, val_fraction=0.34), "all")


@pytest.mark.parametrize("text, message", [
    ("{", "not a readable JSON class map"),
    ('{"classes": ["only"]}', "at least 2"),
    ('{"classes": [{"name": "a", "color": [0, 0, 0]}, {"name": "b"}]}', "every class or to none"),
    ('{"classes": [{"name": "a", "color": [0, 0, 300]}, {"name": "b", "color": [1, 1, 1]}]}', "0..255"),
    ('{"classes": [{"name": "a", "color": [1, 1, 1]}, {"name": "b", "color": [1, 1, 1]}]}', "share a colour"),
])
def test_malformed_class_maps_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "classes.json"
    path.write_text(text)
    result = CliRunner().invoke(app, ["train", "--dataset", "folder", "--data-root", str(tmp_path),
                                      "--classes", str(path), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_class_map_and_num_classes_must_agree(tmp_path):
    root = rgb_dataset(tmp_path / "d")
    with pytest.raises(ConfigError, match="lists 3 classes"):
        build_dataset(DataConfig(dataset="folder", root=str(root), size=32, num_classes=2), "train")


def test_figures_use_the_class_names_and_palette(tmp_path):
    from segdeploy.core.config import EvalConfig
    from segdeploy.evaluation.evaluate import evaluate
    from segdeploy.training.loop import train
    from conftest import tiny_config

    root = rgb_dataset(tmp_path / "d", count=8)
    cfg = tiny_config(data={"dataset": "folder", "root": str(root), "size": 32, "max_images": None,
                            "augment": "none"}, train={"max_steps": 1})
    run = train(cfg, tmp_path / "run")
    result = evaluate(run, EvalConfig(top_k=1))
    assert result["class_names"] == ["background", "polyp", "tool"]
    mosaic = np.asarray(Image.open(run.path / result["figures"]["mosaic"]).convert("RGB"))
    for color in PALETTE[1:]:  # the truth panels are drawn in the class map's colours
        assert (mosaic == color).all(axis=2).sum() > 50, color
