"""Cityscapes and Supervisely Person, registered in datasets.DATASETS as "cityscapes" and "supervisely"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segdeploy.core.config import DataConfig
from segdeploy.core.errors import DataError
from segdeploy.data.dataset import (IMAGE_EXTENSIONS, Sample, SegDataset, by_key, folder_dataset, image_files,
                                    match_folder, official_splits, require_root, seeded_split)
from segdeploy.data.decode import binary_mask
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


def _strip_image_suffixes(name: str) -> str:
    """'a.png' -> 'a'; Supervisely names masks after the image file: 'a.jpg.png' -> 'a'."""
    while Path(name).suffix.lower() in IMAGE_EXTENSIONS:
        name = name[: -len(Path(name).suffix)]
    return name


def _supervisely_export_samples(root: Path) -> list[Sample]:
    samples = []
    for part in sorted(p for p in root.iterdir() if (p / "img").is_dir()):
        masks_dir = part / "masks_machine"
        if not masks_dir.is_dir():
            raise DataError(f"{part} has img/ but no masks_machine/: export the project with Supervisely's "
                            "'export as masks' tool (ann/*.json polygons are not read)")
        masks = by_key(image_files(masks_dir), lambda p: _strip_image_suffixes(p.name))
        for image in by_key(image_files(part / "img"), lambda p: _strip_image_suffixes(p.name)).values():
            key = _strip_image_suffixes(image.name)
            if key not in masks:
                raise DataError(f"image {image} has no mask in {masks_dir}")
            samples.append(Sample(image, masks.pop(key)))
        if masks:
            raise DataError(f"mask {next(iter(masks.values()))} has no image in {part / 'img'}")
    return samples


def person_mask(image: Image.Image) -> np.ndarray:
    """masks_machine holds class indices (0 background, >0 person); 0/255 masks are thresholded."""
    values = np.asarray(image.convert("L"))
    if values.max(initial=0) > 1 and set(np.unique(values)) <= {0, 255}:
        return binary_mask(image)
    return (values > 0).astype(np.uint8)


def supervisely(cfg: DataConfig, split: str) -> SegDataset:
    """Supervisely Person, binary (background / person), seeded split (no official one).

    Either the Supervisely mask export, ROOT/ds*/img/* + ROOT/ds*/masks_machine/* (mask named after
    the image, e.g. img/a.png -> masks_machine/a.png), or a binary mask folder, ROOT/images/* +
    ROOT/masks/* (0/255 or 0/1, paired by file stem).
    """
    root = require_root(cfg)
    if (root / "images").is_dir():
        samples = match_folder(root / "images", root / "masks")
        decode = binary_mask
    else:
        samples = _supervisely_export_samples(root)
        decode = person_mask
        if not samples:
            raise DataError(f"{root} is not a Supervisely Person folder: expected ds*/img + ds*/masks_machine "
                            "or images/ + masks/")
    samples = seeded_split(samples, split, cfg.val_fraction, cfg.split_seed)
    return folder_dataset(cfg, split, "supervisely", samples, ["background", "person"], decode)
