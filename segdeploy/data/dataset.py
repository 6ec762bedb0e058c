"""Dataset registry. Every dataset yields (normalised float32 CHW image, int64 HW mask, 255 = void).

Samples are decoded once, resized to the configured size and held as uint8 arrays, so epochs
after the first never touch the disk and every mask is validated before training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from segdeploy.core.config import DataConfig
from segdeploy.core.errors import ConfigError, DataError
from segdeploy.data.preprocess import VOID_LABEL, normalize, resize_image, resize_mask
from segdeploy.core.progress import track

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val")

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


@dataclass
class Sample:
    image: Path
    mask: Path


class SegDataset(torch.utils.data.Dataset):
    """In-memory, resized samples of one split."""

    def __init__(self, name: str, split: str, images: np.ndarray, masks: np.ndarray,
                 class_names: list[str], ids: list[str], augment: bool = False):
        self.name = name
        self.split = split
        self.images = images  # uint8 N x H x W x 3
        self.masks = masks  # uint8 N x H x W, class index or 255
        self.class_names = list(class_names)
        self.ids = ids
        self.augment = augment

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 HWC image and uint8 HW mask, as resized, before normalisation."""
        return self.images[index], self.masks[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.augment and torch.rand(()) < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return torch.from_numpy(normalize(image)), torch.from_numpy(mask.astype(np.int64))

    def normalized_batch(self, indices) -> np.ndarray:
        return normalize(self.images[list(indices)])


# --------------------------------------------------------------------------- decoding


def _open_image(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def binary_mask(image: Image.Image) -> np.ndarray:
    """Binary masks: class-index {0,1} kept as is, otherwise grey level > 127 is foreground."""
    values = np.asarray(image.convert("L"))
    if values.max(initial=0) <= 1:
        return values.astype(np.uint8)
    return (values > 127).astype(np.uint8)


def index_mask(image: Image.Image) -> np.ndarray:
    """Class-index masks (mode L or P, e.g. VOC palette PNGs): the stored index is the class."""
    if image.mode not in ("L", "P", "I", "I;16"):
        image = image.convert("L")
    return np.asarray(image)  # 16/32-bit ids stay as they are until checked, so 300 cannot wrap to 44


def load_samples(samples: list[Sample], size: int, num_classes: int,
                 decode_mask: Callable[[Image.Image], np.ndarray], description: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(samples), size, size, 3), np.uint8)
    masks = np.empty((len(samples), size, size), np.uint8)
    for i, sample in enumerate(track(samples, description)):
        image = _open_image(sample.image)
        mask_image = _open_image(sample.mask)
        if image.size != mask_image.size:
            raise DataError(
                f"mask {sample.mask} is {mask_image.size[0]}x{mask_image.size[1]} but its image "
                f"{sample.image} is {image.size[0]}x{image.size[1]}"
            )
        mask = decode_mask(mask_image)
        check_mask_values(mask, num_classes, sample.mask)
        images[i] = resize_image(image, size)
        masks[i] = resize_mask(mask.astype(np.uint8), size)
    return images, masks


def check_mask_values(mask: np.ndarray, num_classes: int, path: Path | str) -> None:
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != VOID_LABEL)]
    if bad.size:
        raise DataError(
            f"mask {path} has class id {int(bad[0])}, but the dataset has {num_classes} classes "
            f"(ids 0..{num_classes - 1}, {VOID_LABEL} = void); set data.num_classes or fix the mask"
        )


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            files[path.stem] = path
    return files


def match_folder(images_dir: Path, masks_dir: Path, mask_suffix: str = "") -> list[Sample]:
    """Pair images and masks by file stem (any image extension); every file needs its partner."""
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(f"folder not found: {folder}")
    images = _files_by_stem(images_dir)
    masks = {stem[: len(stem) - len(mask_suffix)] if mask_suffix and stem.endswith(mask_suffix) else stem: p
             for stem, p in _files_by_stem(masks_dir).items()}
    if not images:
        raise DataError(f"no images in {images_dir} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    for stem, path in images.items():
        if stem not in masks:
            raise DataError(f"image {path} has no mask in {masks_dir}")
    for stem, path in masks.items():
        if stem not in images:
            raise DataError(f"mask {path} has no image in {images_dir}")
    return [Sample(images[s], masks[s]) for s in sorted(images)]


def seeded_split(samples: list, split: str, val_fraction: float, seed: int) -> list:
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = max(1, round(len(samples) * val_fraction))
    chosen = order[:n_val] if split == "val" else order[n_val:]
    return [samples[i] for i in sorted(chosen)]


def _require_root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise DataError(f"dataset {cfg.dataset!r} needs a data root: pass --data-root PATH")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root not found: {root}")
    if not any(root.iterdir()):
        raise DataError(f"data root is empty: {root}")
    return root


def _cap(samples: list, cfg: DataConfig, split: str) -> list:
    if not samples:
        raise DataError(f"dataset {cfg.dataset!r} has no {split} images under {cfg.root}")
    return samples[: cfg.max_images] if cfg.max_images else samples


# --------------------------------------------------------------------------- datasets


def synthetic(cfg: DataConfig, split: str) -> SegDataset:
    """Shapes on textured backgrounds: class 1 discs, 2 squares, 3 triangles, ... (deterministic)."""
    num_classes = cfg.num_classes or 4
    if num_classes < 2:
        raise ConfigError("synthetic dataset needs at least 2 classes")
    indices = seeded_split(list(range(cfg.synthetic_images)), split, cfg.val_fraction, cfg.split_seed)
    indices = _cap(indices, cfg, split)
    size = cfg.size
    images = np.empty((len(indices), size, size, 3), np.uint8)
    masks = np.zeros((len(indices), size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
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
    return SegDataset("synthetic", split, images, masks, names, [str(i) for i in indices],
                      augment=cfg.augment and split == "train")


def _folder_dataset(cfg: DataConfig, split: str, name: str, samples_for_split: list[Sample],
                    num_classes: int, class_names: list[str], decode_mask) -> SegDataset:
    samples = _cap(samples_for_split, cfg, split)
    images, masks = load_samples(samples, cfg.size, num_classes, decode_mask,
                                 f"loading {name} {split} ({len(samples)} images)")
    return SegDataset(name, split, images, masks, class_names, [s.image.stem for s in samples],
                      augment=cfg.augment and split == "train")


def folder(cfg: DataConfig, split: str) -> SegDataset:
    """ROOT/images + ROOT/masks (seeded split), or ROOT/{train,val}/{images,masks}."""
    root = _require_root(cfg)
    if (root / split / "images").is_dir():
        samples = match_folder(root / split / "images", root / split / "masks")
    elif any((root / s / "images").is_dir() for s in SPLITS):
        raise DataError(f"{root} has per-split folders but no {split} split: {root / split / 'images'} not found")
    else:
        samples = seeded_split(match_folder(root / "images", root / "masks"), split,
                               cfg.val_fraction, cfg.split_seed)
    num_classes = cfg.num_classes or 2
    names = ["background", "foreground"] if num_classes == 2 else [f"class{c}" for c in range(num_classes)]
    decode = binary_mask if num_classes == 2 else index_mask
    return _folder_dataset(cfg, split, "folder", samples, num_classes, names, decode)


def kvasir(cfg: DataConfig, split: str) -> SegDataset:
    """Kvasir-SEG: images/*.jpg + masks/*.jpg (JPEG masks, > 127 = polyp); seeded 880/120 split."""
    root = _require_root(cfg)
    samples = seeded_split(match_folder(root / "images", root / "masks"), split,
                           cfg.val_fraction, cfg.split_seed)
    return _folder_dataset(cfg, split, "kvasir", samples, 2, ["background", "polyp"], binary_mask)


def voc(cfg: DataConfig, split: str) -> SegDataset:
    """Pascal VOC 2007/2012: JPEGImages, SegmentationClass palette PNGs, ImageSets/Segmentation."""
    root = _require_root(cfg)
    if not (root / "JPEGImages").is_dir():
        candidates = [root / v for v in ("VOC2012", "VOC2007")] + [root / "VOCdevkit" / v for v in ("VOC2012", "VOC2007")]
        found = [c for c in candidates if (c / "JPEGImages").is_dir()]
        if not found:
            raise DataError(f"{root} is not a VOC folder: no JPEGImages/ (nor VOC2012/ or VOC2007/ inside)")
        root = found[0]
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(f"VOC split list not found: {list_file}")
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    samples = []
    for image_id in ids:
        image, mask = root / "JPEGImages" / f"{image_id}.jpg", root / "SegmentationClass" / f"{image_id}.png"
        if not image.is_file():
            raise DataError(f"{list_file} lists {image_id} but {image} does not exist")
        if not mask.is_file():
            raise DataError(f"image {image} has no mask {mask}")
        samples.append(Sample(image, mask))
    return _folder_dataset(cfg, split, "voc", samples, len(VOC_CLASSES), list(VOC_CLASSES), index_mask)


def _extra(name: str) -> Callable[[DataConfig, str], SegDataset]:
    """A dataset defined in datasets_extra.py, imported on first use."""

    def load(cfg: DataConfig, split: str) -> SegDataset:
        from segdeploy.data import extra as datasets_extra

        return getattr(datasets_extra, name)(cfg, split)

    return load


DATASETS: dict[str, Callable[[DataConfig, str], SegDataset]] = {
    "synthetic": synthetic,
    "folder": folder,
    "kvasir": kvasir,
    "voc": voc,
    "cityscapes": _extra("cityscapes"),
    "supervisely": _extra("supervisely"),
}


def build_dataset(cfg: DataConfig, split: str) -> SegDataset:
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {cfg.dataset!r} (known: {', '.join(DATASETS)})")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    if cfg.max_images is not None and cfg.max_images < 1:
        raise ConfigError(f"data.max_images must be at least 1, got {cfg.max_images}")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be between 0 and 1, got {cfg.val_fraction}")
    return DATASETS[cfg.dataset](cfg, split)
