"""Cityscapes fine (gtFine label ids or train ids), registered in data/registry.py DATASETS as "cityscapes"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segdeploy.core.config import DataConfig
from segdeploy.core.errors import DataError
from segdeploy.data.dataset import Sample, SegDataset, folder_dataset, official_splits, require_root
from segdeploy.data.preprocess import VOID_LABEL

# Cityscapes labelIds -> the 19 train ids of the benchmark (cityscapesScripts' labels.py); others void
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                        24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
_CITYSCAPES_LUT = np.full(256, VOID_LABEL, np.uint8)
for _label_id, _train_id in CITYSCAPES_TRAIN_IDS.items():
    _CITYSCAPES_LUT[_label_id] = _train_id


def cityscapes_mask(image: Image.Image) -> np.ndarray:
    """gtFine *_labelIds.png (34 ids) -> train ids 0..18, every other id 255 (void)."""
    return _CITYSCAPES_LUT[np.asarray(image.convert("L") if image.mode not in ("L", "P") else image)]


def cityscapes_train_id_mask(image: Image.Image) -> np.ndarray:
    """gtFine *_labelTrainIds.png (cityscapesScripts' createTrainIdLabelImgs): 0..18 as stored, 255 void."""
    return np.asarray(image.convert("L") if image.mode not in ("L", "P") else image)


# The mask files a Cityscapes folder may hold, in order of preference: (file suffix, decoder).
CITYSCAPES_MASKS = (("_gtFine_labelIds.png", cityscapes_mask), ("_gtFine_labelTrainIds.png", cityscapes_train_id_mask))


def cityscapes_class_names(cfg: DataConfig) -> list[str]:
    """The 19 train ids; `data.num_classes = 20` adds a 20th output, "void", that no pixel is labelled
    with (void pixels stay 255 and are ignored), the way the second seed study counts Cityscapes."""
    names = list(CITYSCAPES_CLASSES)
    if cfg.num_classes in (None, len(names)):
        return names
    if cfg.num_classes == len(names) + 1:
        return names + ["void"]
    raise DataError(f"cityscapes has 19 classes (or 20 with an unlabelled 'void' output), "
                    f"got data.num_classes = {cfg.num_classes}")


def _cityscapes_mask_file(root: Path, split: str, image: Path, decode) -> tuple[Path, object]:
    """The mask of one image and its decoder; a split uses the mask kind its first image has."""
    stem = image.name[: -len("_leftImg8bit.png")]
    folder = root / "gtFine" / split / image.parent.name
    wanted = [(suffix, dec) for suffix, dec in CITYSCAPES_MASKS if decode in (None, dec)]
    for suffix, dec in wanted:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}", dec
    others = "".join(f" (nor {stem}{suffix})" for suffix, _ in wanted[1:])
    raise DataError(f"image {image} has no mask {folder / (stem + wanted[0][0])}{others}")


def cityscapes(cfg: DataConfig, split: str) -> SegDataset:
    """Cityscapes fine: ROOT/leftImg8bit/SPLIT/CITY/*_leftImg8bit.png (or ROOT/images/..., the layout of the
    Kaggle mirror the second seed used) + ROOT/gtFine/SPLIT/CITY/*_gtFine_labelIds.png (or *_labelTrainIds.png)."""
    root = require_root(cfg)
    samples, decode = [], None
    for part in official_splits(split):
        folders = [root / name / part for name in ("leftImg8bit", "images")]
        images_dir = next((folder for folder in folders if folder.is_dir()), folders[0])
        if not images_dir.is_dir():
            raise DataError(f"{root} is not a Cityscapes folder: {images_dir} not found "
                            "(unpack leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into it)")
        for image in sorted(images_dir.glob("*/*_leftImg8bit.png")):
            mask, decode = _cityscapes_mask_file(root, part, image, decode)
            samples.append(Sample(image, mask))
    return folder_dataset(cfg, split, "cityscapes", samples, cityscapes_class_names(cfg), decode or cityscapes_mask)
