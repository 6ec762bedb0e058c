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
    default_classes: int = 2  # the class count without data.num_classes
    # The class counts the dataset has (cityscapes: 19, or 20 with a "void" output); empty: the count
    # data.num_classes sets (folder, synthetic), which is also what a cross-dataset evaluation passes on.
    class_counts: tuple[int, ...] = ()
    stores_class_ids: bool = True  # masks store class ids, so a void label below the class count is a class
    class_map_file: str | None = None  # ROOT/<file> names the classes and ids itself (its own checks)

    def takes_class_count(self, count: int | None) -> bool:
        return not self.class_counts or count in self.class_counts


def _lazy(module: str, name: str) -> Callable[[DataConfig, str], "SegDataset"]:
    def load(cfg: DataConfig, split: str) -> "SegDataset":
        return getattr(importlib.import_module(f"segdeploy.data.{module}"), name)(cfg, split)

    return load


DATASETS: Registry[DatasetSpec] = Registry("dataset")
DATASETS.register("synthetic", DatasetSpec(_lazy("sources", "synthetic"), "generated shapes (no download)",
                                           needs_root=False, default_classes=4))
DATASETS.register("folder", DatasetSpec(_lazy("sources", "folder"), "ROOT/images + ROOT/masks (or ROOT/{train,val}/...)",
                                        class_map_file="classes.json"))
DATASETS.register("kvasir", DatasetSpec(_lazy("sources", "kvasir"), "Kvasir-SEG polyps (binary)", class_counts=(2,)))
DATASETS.register("voc", DatasetSpec(_lazy("sources", "voc"), "Pascal VOC 2007/2012 (21 classes)", default_classes=21,
                                     class_counts=(21,)))
DATASETS.register("cityscapes", DatasetSpec(_lazy("cityscapes", "cityscapes"), "Cityscapes gtFine (19 train ids)",
                                            default_classes=19, class_counts=(19, 20), stores_class_ids=False))
DATASETS.register("supervisely", DatasetSpec(_lazy("supervisely", "supervisely"), "Supervisely Person (binary)",
                                             class_counts=(2,)))


def check_classes(cfg: DataConfig) -> None:
    """The class count and void label against the dataset and what a mask can hold (ids 0..254 in uint8,
    255 = void; the count's range is RULES' data.num_classes), before any decoding."""
    from pathlib import Path

    spec = DATASETS[cfg.dataset]
    count = cfg.num_classes or spec.default_classes
    if not spec.takes_class_count(count):
        counts = " or ".join(map(str, spec.class_counts))
        raise ConfigError(f"dataset {cfg.dataset} has {counts} classes, got data.num_classes = {count}")
    own_map = cfg.classes or (spec.class_map_file and cfg.root and (Path(cfg.root).expanduser() / spec.class_map_file).is_file())
    if cfg.void_label is not None and spec.stores_class_ids and not own_map and cfg.void_label < count:
        raise ConfigError(f"data.void_label {cfg.void_label} is a class id of the {count} classes (ids 0..{count - 1}): "
                          "the void label must be a value no class uses (e.g. 255), or give the classes and "
                          "their stored ids in a classes.json")

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
    check_classes(cfg)
    from segdeploy.data.augment import AUGMENTATIONS

    AUGMENTATIONS[cfg.augment]  # an unknown preset is a one-line error before any decoding
    return spec.load(cfg, split)
