"""The one place where images become model input: every backend and every command uses it. The pixel
operations themselves live in core/pixels.py (shared with a deployed bundle's predict.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from segdeploy.core.pixels import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_rgb
from segdeploy.core.size import input_hw

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VOID_LABEL", "denormalize", "input_hw", "normalize", "resize_image",
           "resize_mask"]
VOID_LABEL = 255


def resize_image(image: Image.Image | np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """RGB image -> uint8 H x W x 3 at the input size, bilinear (pixels.resize_rgb: no JPEG draft())."""
    return resize_rgb(image, input_hw(size))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 H x W class-index mask -> the input size, nearest neighbour (labels stay labels)."""
    height, width = input_hw(size)
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST), dtype=np.uint8)


def denormalize(images: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Inverse of `normalize`: float32 (N)CHW -> uint8 (N)HWC, for figures."""
    x = np.moveaxis(images, -3, -1) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
