"""The one place where images become model input: every backend and every command uses it."""

from __future__ import annotations

import numpy as np
from PIL import Image

from segdeploy.core.size import input_hw

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VOID_LABEL = 255


def resize_image(image: Image.Image, size: int | tuple[int, int]) -> np.ndarray:
    """RGB PIL image -> uint8 H x W x 3 at the input size, bilinear."""
    height, width = input_hw(size)
    if image.mode == "RGB" and image.format == "JPEG":
        image.draft("RGB", (width, height))  # decode JPEGs at reduced scale: much faster, same result size
    return np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 H x W class-index mask -> the input size, nearest neighbour (labels stay labels)."""
    height, width = input_hw(size)
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST), dtype=np.uint8)


def normalize(images: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 NHWC or HWC RGB -> float32 NCHW or CHW, scaled to [0, 1] then mean/std normalised."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def denormalize(images: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Inverse of `normalize`: float32 (N)CHW -> uint8 (N)HWC, for figures."""
    x = np.moveaxis(images, -3, -1) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
