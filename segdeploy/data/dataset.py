"""A segmentation dataset in memory, and how images and masks are decoded. Every dataset yields (normalised float32 CHW image, int64 HW mask, 255 = void).

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
from segdeploy.core.errors import DataError
from segdeploy.core.validate import check_path
from segdeploy.data.preprocess import VOID_LABEL, normalize, resize_image, resize_mask
from segdeploy.core.progress import track

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val")



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


class FormatError(ValueError):
    """An image or mask stored in a way segdeploy does not read; the message follows its path."""


def image_rgb8(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB. 16-bit grey images are scaled by their bit depth (value / 257), not clipped
    at 255 as PIL's convert("RGB") does (which makes them near-white); float images are refused."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise FormatError("has 32-bit pixel values: save it with 8 or 16 bits per channel")
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        raise FormatError("is a floating-point image: save it with 8 or 16 bits per channel")
    return image


def grey_mask(image: Image.Image) -> Image.Image:
    """A mask stored as RGB(A) must be grey (R = G = B, e.g. Kvasir's JPEG masks); a colour-coded mask
    would become arbitrary grey levels (dark red -> 38), so it is refused with what was found."""
    if image.mode not in ("RGB", "RGBA"):
        return image
    rgb = np.asarray(image.convert("RGB"))
    coloured = (rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)) > 48
    if coloured.mean() > 0.001:
        examples = ", ".join(str(tuple(int(v) for v in c)) for c in np.unique(rgb[coloured], axis=0)[:3])
        raise FormatError(f"is an RGB colour image (colours such as {examples}); masks must be single-channel: "
                          "class indices 0..N-1 with 255 = void (mode L or a palette PNG), or for binary data "
                          "grey levels (> 127 = foreground). Convert its colours to class indices")
    return image


def binary_mask(image: Image.Image) -> np.ndarray:
    """Binary masks: palette PNGs hold class indices (read as they are, 255 = void); grey masks keep {0,1}
    as class indices, otherwise grey level > 127 is foreground; colour-coded masks are refused."""
    if image.mode == "P":
        return np.asarray(image)
    values = np.asarray(grey_mask(image).convert("L"))
    if values.max(initial=0) <= 1:
        return values.astype(np.uint8)
    return (values > 127).astype(np.uint8)


def index_mask(image: Image.Image) -> np.ndarray:
    """Class-index masks (mode L or P, e.g. VOC palette PNGs): the stored index is the class."""
    if image.mode not in ("L", "P", "I", "I;16"):
        image = grey_mask(image).convert("L")
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
        try:
            mask = decode_mask(mask_image)
        except FormatError as exc:
            raise DataError(f"mask {sample.mask} {exc}") from None
        check_mask_values(mask, num_classes, sample.mask)
        try:
            images[i] = resize_image(image_rgb8(image), size)
        except FormatError as exc:
            raise DataError(f"image {sample.image} {exc}") from None
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


def require_root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise DataError(f"dataset {cfg.dataset!r} needs a data root: pass --data-root PATH")
    root = check_path(cfg.root, "folder", "data root", error=DataError)
    if not any(root.iterdir()):
        raise DataError(f"data root is empty: {root}")
    return root


def cap_samples(samples: list, cfg: DataConfig, split: str) -> list:
    if not samples:
        raise DataError(f"dataset {cfg.dataset!r} has no {split} images under {cfg.root}")
    return samples[: cfg.max_images] if cfg.max_images else samples


def folder_dataset(cfg: DataConfig, split: str, name: str, samples_for_split: list[Sample],
                    num_classes: int, class_names: list[str], decode_mask) -> SegDataset:
    samples = cap_samples(samples_for_split, cfg, split)
    images, masks = load_samples(samples, cfg.size, num_classes, decode_mask,
                                 f"loading {name} {split} ({len(samples)} images)")
    return SegDataset(name, split, images, masks, class_names, [s.image.stem for s in samples],
                      augment=cfg.augment and split == "train")
