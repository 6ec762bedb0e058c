"""The built-in datasets: synthetic shapes, any images/masks folder, Kvasir-SEG, Pascal VOC."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdeploy.core.config import DataConfig
from segdeploy.core.errors import ConfigError, DataError
from segdeploy.data.classmap import find_class_map
from segdeploy.data.dataset import (SPLITS, SegDataset, Sample, cap_samples, check_link, folder_dataset, match_folder,
                                    official_splits, require_root, seeded_split)
from segdeploy.data.decode import binary_mask, index_mask
from segdeploy.data.preprocess import input_hw

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def synthetic(cfg: DataConfig, split: str) -> SegDataset:
    """Shapes on textured backgrounds: class 1 discs, 2 squares, 3 triangles, ... (deterministic)."""
    num_classes = cfg.num_classes or 4
    if num_classes < 2:
        raise ConfigError("synthetic dataset needs at least 2 classes")
    indices = seeded_split(list(range(cfg.synthetic_images)), split, cfg.val_fraction, cfg.split_seed)
    indices = cap_samples(indices, cfg, split)
    height, width = input_hw(cfg.size)
    images = np.empty((len(indices), height, width, 3), np.uint8)
    masks = np.zeros((len(indices), height, width), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width
    palette = np.random.default_rng(1234).integers(40, 255, size=(num_classes, 3))
    for n, index in enumerate(indices):
        rng = np.random.default_rng([cfg.split_seed, index])
        base = rng.integers(0, 90, size=3).astype(np.float32)
        image = base + 40 * np.sin(6.28 * (xx * rng.uniform(1, 4) + yy * rng.uniform(1, 4)))[..., None]
        for _ in range(rng.integers(1, 4)):
            cls = int(rng.integers(1, num_classes))
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.22)
            kind = (cls - 1) % 3
            if kind == 0:
                region = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
            elif kind == 1:
                region = (abs(xx - cx) < r) & (abs(yy - cy) < r)
            else:
                region = (yy - cy < r) & (yy - cy > -r) & (abs(xx - cx) < (yy - cy + r) / 2)
            masks[n][region] = cls
            image[region] = palette[cls] + rng.normal(0, 12, size=3)
        image += rng.normal(0, 8, size=image.shape)
        images[n] = np.clip(image, 0, 255).astype(np.uint8)
    names = ["background"] + [f"class{c}" for c in range(1, num_classes)]
    from segdeploy.data.augment import make_augmentation

    transform = make_augmentation(cfg.augment, (height, width)) if split == "train" else None
    return SegDataset("synthetic", split, images, masks, names, [str(i) for i in indices], transform=transform)


def _folder_samples(root: Path, cfg: DataConfig, split: str) -> list[Sample]:
    if any((root / s / "images").is_dir() for s in SPLITS):
        samples = []
        for part in official_splits(split):
            if not (root / part / "images").is_dir():
                raise DataError(f"{root} has per-split folders but no {part} split: {root / part / 'images'} not found")
            samples += match_folder(root / part / "images", root / part / "masks")
        return samples
    return seeded_split(match_folder(root / "images", root / "masks"), split, cfg.val_fraction, cfg.split_seed)


def folder(cfg: DataConfig, split: str) -> SegDataset:
    """ROOT/images + ROOT/masks (seeded split), or ROOT/{train,val}/{images,masks}; class names, palette
    and mask encoding from a class map (--classes FILE or ROOT/classes.json) when there is one."""
    root = require_root(cfg)
    class_map = find_class_map(root, cfg.classes, cfg.void_label)
    samples = _folder_samples(root, cfg, split)
    if class_map is not None:
        if cfg.num_classes not in (None, len(class_map.names)):
            raise ConfigError(f"data.num_classes is {cfg.num_classes} but {class_map.source} lists "
                              f"{len(class_map.names)} classes")
        return folder_dataset(cfg, split, "folder", samples, list(class_map.names), class_map,
                              palette=class_map.palette, decode_key=class_map.key())
    num_classes = cfg.num_classes or 2
    names = ["background", "foreground"] if num_classes == 2 else [f"class{c}" for c in range(num_classes)]
    decode = binary_mask if num_classes == 2 else index_mask
    return folder_dataset(cfg, split, "folder", samples, names, decode)


def kvasir(cfg: DataConfig, split: str) -> SegDataset:
    """Kvasir-SEG: images/*.jpg + masks/*.jpg (JPEG masks, > 127 = polyp); seeded 880/120 split."""
    root = require_root(cfg)
    samples = seeded_split(match_folder(root / "images", root / "masks"), split,
                           cfg.val_fraction, cfg.split_seed)
    return folder_dataset(cfg, split, "kvasir", samples, ["background", "polyp"], binary_mask)


def voc(cfg: DataConfig, split: str) -> SegDataset:
    """Pascal VOC 2007/2012: JPEGImages, SegmentationClass palette PNGs, ImageSets/Segmentation."""
    root = require_root(cfg)
    if not (root / "JPEGImages").is_dir():
        candidates = [root / v for v in ("VOC2012", "VOC2007")] + [root / "VOCdevkit" / v for v in ("VOC2012", "VOC2007")]
        found = [c for c in candidates if (c / "JPEGImages").is_dir()]
        if not found:
            raise DataError(f"{root} is not a VOC folder: no JPEGImages/ (nor VOC2012/ or VOC2007/ inside)")
        root = found[0]
    samples = []
    for part in official_splits(split):
        samples += _voc_samples(root, part)
    return folder_dataset(cfg, split, "voc", samples, list(VOC_CLASSES), index_mask)


def _voc_samples(root: Path, split: str) -> list[Sample]:
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(f"VOC split list not found: {list_file}")
    ids = [line.split()[0] for line in list_file.read_text(encoding="utf-8-sig", errors="replace").splitlines() if line.strip()]
    samples = []
    for image_id in ids:
        image, mask = root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClass" / f"{image_id}.png"
        check_link(image)
        check_link(mask)
        if not image.is_file():
            raise DataError(f"{list_file} lists {image_id} but {image} does not exist")
        if not mask.is_file():
            raise DataError(f"image {image} has no mask {mask}")
        samples.append(Sample(image, mask))
    return samples
