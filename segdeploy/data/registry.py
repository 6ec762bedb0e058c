"""Dataset registry: what `--dataset` accepts. Loaders are imported when a dataset is built, so listing
the registry (e.g. for `train --help`) costs nothing."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from segdeploy.core.config import DataConfig
from segdeploy.core.errors import ConfigError
from segdeploy.core.registry import Registry
from segdeploy.core.size import input_hw

SPLITS = ("train", "val", "all")  # all: the union of train and val


@dataclass(frozen=True)
class DatasetSpec:
    load: Callable[[DataConfig, str], "SegDataset"]
    description: str
    needs_root: bool = True  # a folder on disk (--data-root); synthetic data is generated
    reads_num_classes: bool = False  # --num-classes sets its class count (else the dataset fixes it)


def _lazy(module: str, name: str) -> Callable[[DataConfig, str], "SegDataset"]:
    def load(cfg: DataConfig, split: str) -> "SegDataset":
        return getattr(importlib.import_module(f"segdeploy.data.{module}"), name)(cfg, split)

    return load


DATASETS: Registry[DatasetSpec] = Registry("dataset")
DATASETS.register("synthetic", DatasetSpec(_lazy("sources", "synthetic"), "generated shapes (no download)",
                                           needs_root=False, reads_num_classes=True))
DATASETS.register("folder", DatasetSpec(_lazy("sources", "folder"), "ROOT/images + ROOT/masks (or ROOT/{train,val}/...)",
                                        reads_num_classes=True))
DATASETS.register("kvasir", DatasetSpec(_lazy("sources", "kvasir"), "Kvasir-SEG polyps (binary)"))
DATASETS.register("voc", DatasetSpec(_lazy("sources", "voc"), "Pascal VOC 2007/2012 (21 classes)"))
DATASETS.register("cityscapes", DatasetSpec(_lazy("extra", "cityscapes"), "Cityscapes gtFine (19 train ids)"))
DATASETS.register("supervisely", DatasetSpec(_lazy("extra", "supervisely"), "Supervisely Person (binary)"))


def build_dataset(cfg: DataConfig, split: str) -> "SegDataset":
    spec = DATASETS[cfg.dataset]
    if cfg.root and not spec.needs_root:
        readers = ", ".join(name for name, entry in DATASETS.items() if entry.needs_root)
        raise ConfigError(f"dataset {cfg.dataset!r} is generated and reads no data root, but the data root is "
                          f"{cfg.root}: to use that folder pass --dataset folder (or another dataset that reads one: "
                          f"{readers}), or drop --data-root")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    if cfg.max_images is not None and cfg.max_images < 1:
        raise ConfigError(f"data.max_images must be at least 1, got {cfg.max_images}")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be between 0 and 1, got {cfg.val_fraction}")
    if min(input_hw(cfg.size)) < 1:
        raise ConfigError(f"data.size must be positive, got {cfg.size!r}")
    if cfg.void_label is not None and not 0 <= cfg.void_label <= 65535:
        raise ConfigError(f"data.void_label must be a mask value 0..65535, got {cfg.void_label}")
    from segdeploy.data.augment import AUGMENTATIONS

    AUGMENTATIONS[cfg.augment]  # an unknown preset is a one-line error before any decoding
    return spec.load(cfg, split)
