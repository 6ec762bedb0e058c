"""Cityscapes and Supervisely Person on generated folders in their real layouts."""

from __future__ import annotations

import numpy as np
import pytest

from segdeploy.core.config import DataConfig
from segdeploy.data.registry import DATASETS, build_dataset
from segdeploy.core.errors import ConfigError, DataError
from tests.conftest import write_image


def make_cityscapes(root, split="train", cities=("aachen", "bochum"), per_city=2):
    """leftImg8bit + gtFine labelIds; the mask's left half is road (7), right half car (26),
    a band of ego vehicle (1, void) on top and a person square (24)."""
    rng = np.random.default_rng(0)
    for city in cities:
        for i in range(per_city):
            stem = f"{city}_{i:06d}_000019"
            write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                        rng.integers(0, 255, (32, 64, 3), dtype=np.uint8))
            label = np.full((32, 64), 7, np.uint8)
            label[:, 32:] = 26
            label[:4] = 1
            label[10:20, 10:20] = 24
            write_image(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
            write_image(root / "gtFine" / split / city / f"{stem}_gtFine_color.png",
                        np.zeros((32, 64, 3), np.uint8))  # other gtFine files are ignored
    return root


def test_registered():
    assert {"cityscapes", "supervisely"} <= set(DATASETS)


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    root = make_cityscapes(tmp_path / "cs")
    make_cityscapes(root, split="val", cities=("frankfurt",), per_city=1)
    cfg = DataConfig(dataset="cityscapes", root=str(root), size=32)
    train = build_dataset(cfg, "train")
    val = build_dataset(cfg, "val")
    assert len(train) == 4 and len(val) == 1
    assert train.num_classes == 19 and train.class_names[0] == "road" and train.class_names[13] == "car"
    assert train.ids[0] == "aachen_000000_000019_leftImg8bit"
    mask = train.masks[0]  # 64x32 squeezed to 32x32 by nearest resizing
    assert set(np.unique(mask)) == {0, 11, 13, 255}
    assert (mask[:2] == 255).all()  # ego vehicle -> void
    assert mask[20, 2] == 0 and mask[20, 30] == 13  # road left, car right
    assert mask[15, 7] == 11  # person (rows 10..19, columns 10..19 halved)


def test_cityscapes_missing_mask_and_wrong_folder(tmp_path):
    root = make_cityscapes(tmp_path / "cs", cities=("aachen",), per_city=1)
    next((root / "gtFine" / "train" / "aachen").glob("*_labelIds.png")).unlink()
    with pytest.raises(DataError, match="has no mask .*_gtFine_labelIds.png"):
        build_dataset(DataConfig(dataset="cityscapes", root=str(root), size=32), "train")
    (tmp_path / "other" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="not a Cityscapes folder"):
        build_dataset(DataConfig(dataset="cityscapes", root=str(tmp_path / "other"), size=32), "train")


def test_cityscapes_kaggle_mirror_layout_and_20_classes(tmp_path):
    """The second seed's mirror: images/ instead of leftImg8bit/, *_labelTrainIds.png masks (0..18, 255 void);
    data.num_classes = 20 adds an output 'void' that no pixel carries, as that study counts Cityscapes."""
    root = tmp_path / "cs"
    train_ids = np.full((32, 64), 0, np.uint8)
    train_ids[:, 32:] = 13
    train_ids[:4] = 255
    for split in ("train", "val"):
        write_image(root / "images" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png",
                    np.zeros((32, 64, 3), np.uint8))
        write_image(root / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png", train_ids)
    cfg = DataConfig(dataset="cityscapes", root=str(root), size=32)
    nineteen = build_dataset(cfg, "train")
    assert nineteen.num_classes == 19 and set(np.unique(nineteen.masks[0])) == {0, 13, 255}
    cfg.num_classes = 20
    twenty = build_dataset(cfg, "val")
    assert twenty.num_classes == 20 and twenty.class_names[-1] == "void"
    assert (twenty.masks == nineteen.masks).all()  # void pixels stay 255 (ignored), none become class 19
    cfg.num_classes = 21
    with pytest.raises(ConfigError, match="cityscapes has 19 or 20 classes, got data.num_classes = 21"):
        build_dataset(cfg, "train")
    write_image(root / "images" / "train" / "bochum" / "bochum_000000_000019_leftImg8bit.png",
                np.zeros((32, 64, 3), np.uint8))
    with pytest.raises(DataError, match="has no mask .*bochum_000000_000019_gtFine_labelTrainIds.png"):
        build_dataset(DataConfig(dataset="cityscapes", root=str(root), size=32), "train")


def _person(i):
    mask = np.zeros((24, 32), np.uint8)
    mask[4 + i: 16, 8:20] = 1
    return mask


def test_supervisely_export_layout(tmp_path):
    """ds*/img + ds*/masks_machine (class-index masks, named after the image incl. extension)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "sup"
    for part in ("ds1", "ds2"):
        for i in range(4):
            write_image(root / part / "img" / f"{part}-p{i}.jpg", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
            write_image(root / part / "masks_machine" / f"{part}-p{i}.jpg.png", _person(i))
    (root / "meta.json").write_text("{}")
    cfg = DataConfig(dataset="supervisely", root=str(root), size=32, val_fraction=0.25)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) + len(val) == 8 and len(val) == 2
    assert not set(train.ids) & set(val.ids)
    assert train.class_names == ["background", "person"]
    index = train.ids.index("ds1-p0")
    expected = np.zeros((32, 32), bool)
    expected[5:21, 8:20] = True  # rows 4..15 of 24 stretched to 32
    assert set(np.unique(train.masks[index])) == {0, 1}
    assert abs(int(train.masks[index].sum()) - int(expected.sum())) <= 24


def test_supervisely_binary_folder_form(tmp_path):
    root = tmp_path / "sup"
    for i in range(5):
        write_image(root / "images" / f"p{i}.png", np.full((24, 32, 3), 40 * i, np.uint8))
        write_image(root / "masks" / f"p{i}.png", _person(i) * 255)
    cfg = DataConfig(dataset="supervisely", root=str(root), size=32, val_fraction=0.2)
    train = build_dataset(cfg, "train")
    assert len(train) == 4 and set(np.unique(train.masks)) == {0, 1}


def test_supervisely_errors(tmp_path):
    root = tmp_path / "sup"
    write_image(root / "ds1" / "img" / "a.png", np.zeros((8, 8, 3), np.uint8))
    (root / "ds1" / "ann").mkdir()
    with pytest.raises(DataError, match="no masks_machine"):
        build_dataset(DataConfig(dataset="supervisely", root=str(root), size=32), "train")
    write_image(root / "ds1" / "masks_machine" / "b.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="a.png has no mask"):
        build_dataset(DataConfig(dataset="supervisely", root=str(root), size=32), "train")
