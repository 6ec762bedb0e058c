"""Supervisely Person (background / person), registered in data/registry.py DATASETS as "supervisely"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segdeploy.core.config import DataConfig
from segdeploy.core.errors import DataError
from segdeploy.data.dataset import (IMAGE_EXTENSIONS, Sample, SegDataset, by_key, folder_dataset, image_files,
                                    match_folder, require_root, seeded_split)
from segdeploy.data.decode import binary_mask


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
