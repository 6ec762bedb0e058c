"""A segmentation dataset and how its images and masks are decoded. Every dataset yields (normalised
float32 CHW image, int64 HW mask, 255 = void).

Samples are decoded once, resized to the configured size and held as uint8 arrays: memory-mapped from
the dataset cache (data/cache.py) when it can be used, else in memory. Epochs after the first never
decode again and every mask is validated before training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from segdeploy.core.config import DataConfig
from segdeploy.core.errors import DataError
from segdeploy.core.pixels import DEFAULT_MAX_MEGAPIXELS, IMAGE_EXTENSIONS
from segdeploy.core.progress import track
from segdeploy.core.validate import check_path
from segdeploy.data.decode import (FormatError, UnknownLabel, check_mask_values, image_rgb8, index_mask,
                                   open_image)
from segdeploy.data.preprocess import VOID_LABEL, input_hw, normalize, resize_image, resize_mask

SPLITS = ("train", "val")


@dataclass
class Sample:
    image: Path
    mask: Path


class SegDataset(torch.utils.data.Dataset):
    """Resized uint8 samples of one split; `transform` (data/augment.py) augments training samples."""

    def __init__(self, name: str, split: str, images: np.ndarray, masks: np.ndarray,
                 class_names: list[str], ids: list[str], transform: Callable | None = None,
                 palette: np.ndarray | None = None):
        self.name = name
        self.split = split
        self.images = images  # uint8 N x H x W x 3
        self.masks = masks  # uint8 N x H x W, class index or 255
        self.class_names = list(class_names)
        self.ids = ids
        self.transform = transform
        self.palette = palette  # uint8 num_classes x 3 from a class map, else None (figures pick colours)
        self.storage = None  # the cache entry the arrays are mapped from (data/cache.py), set by its loader
        self.epoch, self.seed = 0, 0

    @property
    def augment(self) -> bool:
        return self.transform is not None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Augmentation of sample i in `epoch` depends only on (seed, epoch, i): resumable, any worker count."""
        self.epoch, self.seed = epoch, seed

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 HWC image and uint8 HW mask, as resized, before normalisation."""
        return self.images[index], self.masks[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.transform is not None:
            image, mask = self.transform(image, mask, sample_seed(self.seed, self.epoch, index))
        sample = torch.from_numpy(normalize(image)), torch.from_numpy(mask.astype(np.int64))
        if self.storage is not None:
            self.storage.release(index)  # keeps the process's resident memory bounded by the batch
        return sample

    def image_batch(self, indices) -> np.ndarray:
        """uint8 N x H x W x 3 images (a copy), as resized: what a deploy graph takes."""
        indices = list(indices)
        batch = np.array(self.images[indices])
        if self.storage is not None:
            for index in indices:
                self.storage.release(index)
        return batch

    def normalized_batch(self, indices) -> np.ndarray:
        """float32 N x 3 x H x W: `image_batch` through the shared preprocessing."""
        return normalize(self.image_batch(indices))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.storage is not None:  # DataLoader workers map the cache again instead of copying it
            del state["images"], state["masks"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.storage is not None:
            self.images, self.masks = self.storage.images, self.storage.masks


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class MaskDecoder:
    """Mask image -> uint8 class ids (255 void), checked against the number of classes.

    `void_label`: a stored value meaning "ignore" (`--void-label`), mapped to 255 before decoding.
    `key` names the decoding for the dataset cache: a different decoding is a different cache entry."""

    decode: Callable[[Image.Image], np.ndarray]
    num_classes: int
    void_label: int | None = None
    key: str = ""

    def __call__(self, image: Image.Image, path: Path) -> np.ndarray:
        try:
            labels = np.asarray(self.decode(image))
        except (UnknownLabel, FormatError) as exc:
            raise DataError(f"mask {path} {exc}") from None
        if self.void_label is not None and image.mode not in ("RGB", "RGBA"):
            labels = np.where(index_mask(image) == self.void_label, VOID_LABEL, labels)
        check_mask_values(labels, self.num_classes, path)
        return labels.astype(np.uint8)

    def cache_key(self) -> str:
        name = getattr(self.decode, "__qualname__", type(self.decode).__name__)
        return f"{name}|{self.key}|classes={self.num_classes}|void={self.void_label}"


def decode_sample(sample: Sample, hw: tuple[int, int], decoder: MaskDecoder,
                  max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask, both turned by their EXIF orientation, at the model size; the image through
    the one decode path (core/pixels.py) that predict and a deployed bundle use."""
    image = open_image(sample.image, max_megapixels)
    mask_image = open_image(sample.mask, max_megapixels)
    if image.size != mask_image.size:
        raise DataError(
            f"mask {sample.mask} is {mask_image.size[0]}x{mask_image.size[1]} but its image "
            f"{sample.image} is {image.size[0]}x{image.size[1]}"
        )
    mask = decoder(mask_image, sample.mask)
    try:
        image = image_rgb8(image)
    except FormatError as exc:
        raise DataError(f"image {sample.image} {exc}") from None
    return resize_image(image, hw), resize_mask(mask, hw)


def decode_into(samples: list[Sample], hw: tuple[int, int], decoder: MaskDecoder, write: Callable,
                description: str, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> None:
    """Decode every sample in order and hand (index, image, mask) to `write`."""
    for i, sample in enumerate(track(samples, description)):
        write(i, *decode_sample(sample, hw, decoder, max_megapixels))


def load_samples(samples: list[Sample], hw: tuple[int, int], decoder: MaskDecoder, description: str,
                 max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> tuple[np.ndarray, np.ndarray]:
    """All samples decoded into memory."""
    images = np.empty((len(samples), *hw, 3), np.uint8)
    masks = np.empty((len(samples), *hw), np.uint8)

    def write(i: int, image: np.ndarray, mask: np.ndarray) -> None:
        images[i], masks[i] = image, mask

    decode_into(samples, hw, decoder, write, description, max_megapixels)
    return images, masks


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


def official_splits(split: str) -> tuple[str, ...]:
    """The official splits `split` covers: "all" is their union."""
    return SPLITS if split == "all" else (split,)


def seeded_split(samples: list, split: str, val_fraction: float, seed: int) -> list:
    """A seeded train/val split of datasets without an official one ("all": every sample, in order)."""
    if split == "all":
        return list(samples)
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
                   class_names: list[str], decode_mask: Callable, palette: np.ndarray | None = None,
                   decode_key: str = "") -> SegDataset:
    """Decode (or map from the cache) the samples of one split at the configured size."""
    from segdeploy.data.augment import make_augmentation
    from segdeploy.data.cache import load_cached

    samples = cap_samples(samples_for_split, cfg, split)
    hw = input_hw(cfg.size)
    decoder = MaskDecoder(decode_mask, len(class_names), cfg.void_label, decode_key)
    description = f"loading {name} {split} ({len(samples)} images)"
    # one entry per identity: a capped run (--max-images) and a full one do not replace each other
    identity = {"dataset": name, "root": str(Path(cfg.root or "").expanduser().resolve()), "split": split,
                "size": list(hw), "max_images": cfg.max_images, "decoder": decoder.cache_key()}
    storage = load_cached(identity, [p for s in samples for p in (s.image, s.mask)], (len(samples), *hw),
                          lambda write: decode_into(samples, hw, decoder, write, description, cfg.max_megapixels))
    images, masks = (storage.images, storage.masks) if storage else \
        load_samples(samples, hw, decoder, description, cfg.max_megapixels)
    transform = make_augmentation(cfg.augment, hw) if split == "train" else None
    dataset = SegDataset(name, split, images, masks, class_names, [s.image.stem for s in samples],
                         transform=transform, palette=palette)
    dataset.storage = storage
    return dataset
