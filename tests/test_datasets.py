import numpy as np
import pytest
from PIL import Image

from conftest import make_folder_dataset, write_image
from segdeploy.core.config import DataConfig
from segdeploy.data.dataset import seeded_split
from segdeploy.data.registry import build_dataset
from segdeploy.data.sources import VOC_CLASSES
from segdeploy.core.errors import ConfigError, DataError
from segdeploy.data.preprocess import denormalize, normalize


def test_synthetic_is_deterministic_and_valid():
    cfg = DataConfig(dataset="synthetic", size=32, synthetic_images=20)
    a, b = build_dataset(cfg, "train"), build_dataset(cfg, "train")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    val = build_dataset(cfg, "val")
    assert len(a) + len(val) == 20 and not set(a.ids) & set(val.ids)
    assert a.masks.max() < 4 and len(np.unique(a.masks)) > 1
    image, mask = a[0]
    assert image.shape == (3, 32, 32) and image.dtype.is_floating_point
    assert mask.shape == (32, 32) and str(mask.dtype) == "torch.int64"


def test_normalize_round_trip():
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = normalize(images)
    assert x.shape == (2, 3, 8, 8) and x.dtype == np.float32
    np.testing.assert_array_equal(denormalize(x), images)


def test_folder_matches_by_stem_across_extensions(tmp_path):
    root = make_folder_dataset(tmp_path / "d", count=8, image_ext=".jpg", mask_ext=".png")
    cfg = DataConfig(dataset="folder", root=str(root), size=32, val_fraction=0.25)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 6 and len(val) == 2
    assert set(np.unique(train.masks)) == {0, 1}  # 255 thresholded to foreground
    assert train.images.shape == (6, 32, 32, 3)


def test_folder_class_index_masks_and_out_of_range(tmp_path):
    root = make_folder_dataset(tmp_path / "d", count=6, num_classes=4)
    cfg = DataConfig(dataset="folder", root=str(root), size=32, num_classes=4, val_fraction=0.25)
    assert set(np.unique(build_dataset(cfg, "train").masks)) <= {0, 1, 2, 3}
    split_root = tmp_path / "splits"  # ROOT/{train,val}/{images,masks}: class 3 in both splits
    for split in ("train", "val"):
        make_folder_dataset(split_root / split, count=3, num_classes=4)
    cfg = DataConfig(dataset="folder", root=str(split_root), size=32, num_classes=3)
    for split in ("train", "val"):  # every split's masks are checked, not only the training ones
        with pytest.raises(DataError, match=rf"{split}.*class id 3.*3 classes"):
            build_dataset(cfg, split)


def test_image_without_mask_is_named(tmp_path):
    root = make_folder_dataset(tmp_path / "d", count=3)
    (root / "masks" / "img001.png").unlink()
    with pytest.raises(DataError, match="img001"):
        build_dataset(DataConfig(dataset="folder", root=str(root), size=32), "train")


def test_missing_root_and_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_dataset(DataConfig(dataset="kvasir", root=str(tmp_path / "nope")), "train")
    with pytest.raises(DataError, match="needs a data root"):
        build_dataset(DataConfig(dataset="voc"), "train")
    with pytest.raises(ConfigError, match="unknown dataset"):
        build_dataset(DataConfig(dataset="imagenet"), "train")


def make_voc(root, ids_train, ids_val, size=40):
    rng = np.random.default_rng(1)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9)
    for image_id in ids_train + ids_val:
        write_image(root / "JPEGImages" / f"{image_id}.jpg", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        mask = np.zeros((size, size), np.uint8)
        mask[5:20, 5:20] = 15  # person
        mask[20, :] = 255  # void boundary
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        png.save(root / "SegmentationClass" / f"{image_id}.png")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(ids_train) + "\n")
    (sets / "val.txt").write_text("\n".join(ids_val) + "\n")


def test_voc_layout(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    make_voc(root, ["2007_000001", "2007_000002"], ["2007_000003"])
    cfg = DataConfig(dataset="voc", root=str(tmp_path / "VOCdevkit"), size=32)
    train = build_dataset(cfg, "train")
    assert train.num_classes == 21 and train.class_names == list(VOC_CLASSES)
    assert len(train) == 2 and len(build_dataset(cfg, "val")) == 1
    assert set(np.unique(train.masks)) == {0, 15, 255}


def test_kvasir_split_is_seeded_and_disjoint():
    items = list(range(1000))
    train, val = seeded_split(items, "train", 0.12, 0), seeded_split(items, "val", 0.12, 0)
    assert len(train) == 880 and len(val) == 120 and not set(train) & set(val)
    assert val == seeded_split(items, "val", 0.12, 0) != seeded_split(items, "val", 0.12, 1)


def test_split_all_is_the_union_of_train_and_val(tmp_path):
    root = make_folder_dataset(tmp_path / "d", count=8)
    cfg = DataConfig(dataset="folder", root=str(root), size=32, val_fraction=0.25)
    train, val, union = (build_dataset(cfg, split) for split in ("train", "val", "all"))
    assert sorted(union.ids) == sorted(train.ids + val.ids) and len(union) == 8
    per_split = tmp_path / "split"
    make_folder_dataset(per_split / "train", count=3)
    make_folder_dataset(per_split / "val", count=2, seed=1)
    assert len(build_dataset(DataConfig(dataset="folder", root=str(per_split), size=32), "all")) == 5
    voc = tmp_path / "VOC2012"
    make_voc(voc, ["2007_000001", "2007_000002"], ["2007_000003"])
    assert len(build_dataset(DataConfig(dataset="voc", root=str(voc), size=32), "all")) == 3
    with pytest.raises(ConfigError, match="unknown split 'test'"):
        build_dataset(cfg, "test")
