"""Training augmentation presets: joint image + mask transforms (torchvision.transforms.v2, masks as
tv_tensors.Mask so they are resampled nearest and padded with void).

Each sample's random draws come from its own seed (dataset seed, epoch, index) inside a forked torch RNG,
so augmentation is deterministic, independent of the number of DataLoader workers and resumable bit
for bit, and leaves the global RNG alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from segdeploy.core.registry import Registry
from segdeploy.data.preprocess import VOID_LABEL

# Inputs are resized to the model's size before augmentation, so a 2x zoom crops away three quarters of the
# image: `standard` scales mildly, `strong` goes to 0.5-2x (benchmarks/results/augment_presets*.json).
STANDARD_SCALES = (0.75, 1.25)
STRONG_SCALES = (0.5, 2.0)


@dataclass(frozen=True)
class AugmentSpec:
    build: Callable[[tuple[int, int]], list]  # (height, width) -> list of v2 transforms (empty: none)
    description: str


def _flip(hw: tuple[int, int]) -> list:
    from torchvision.transforms import v2

    return [v2.RandomHorizontalFlip()]


def _scale_crop_flip_jitter(hw: tuple[int, int], scales: tuple[float, float]) -> list:
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    return [v2.ScaleJitter(hw, scale_range=scales),
            v2.RandomCrop(hw, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: VOID_LABEL}),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)]


def _standard(hw: tuple[int, int]) -> list:
    return _scale_crop_flip_jitter(hw, STANDARD_SCALES)


def _strong(hw: tuple[int, int]) -> list:
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    return _scale_crop_flip_jitter(hw, STRONG_SCALES) + [
        v2.RandomVerticalFlip(),
        v2.RandomRotation(30, interpolation=v2.InterpolationMode.BILINEAR,
                          fill={tv_tensors.Image: 0, tv_tensors.Mask: VOID_LABEL})]


AUGMENTATIONS: Registry[AugmentSpec] = Registry("augmentation preset")
AUGMENTATIONS.register("none", AugmentSpec(lambda hw: [], "no augmentation"))
AUGMENTATIONS.register("flip", AugmentSpec(_flip, "random horizontal flip"))
AUGMENTATIONS.register("standard", AugmentSpec(
    _standard, "random scale 0.75-1.25x, random crop to the input size (void-padded), horizontal flip, "
               "mild colour jitter"))
AUGMENTATIONS.register("strong", AugmentSpec(
    _strong, "random scale 0.5-2x, crop, horizontal and vertical flips, rotation up to 30 degrees "
             "(void-filled), colour jitter: for imagery without an up"))


class Augmentation:
    """(uint8 HWC image, uint8 HW mask, seed) -> augmented copies of both, at the same size."""

    def __init__(self, transforms: list):
        from torchvision.transforms import v2

        self.transform = v2.Compose(transforms)

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        from torchvision import tv_tensors

        image_t = tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        mask_t = tv_tensors.Mask(torch.from_numpy(np.array(mask)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image_t, mask_t = self.transform(image_t, mask_t)
        return image_t.permute(1, 2, 0).numpy(), mask_t.numpy()


def make_augmentation(preset: str, hw: tuple[int, int]) -> Augmentation | None:
    """The transform of a preset at input size `hw`; None for "none"."""
    transforms = AUGMENTATIONS[preset].build(hw)
    return Augmentation(transforms) if transforms else None
