"""Decoding images and masks: an image as 8-bit RGB, a mask as class ids (255 = void), with the one-line
error a file segdeploy does not read deserves (naming the file and what it holds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segdeploy.core import pixels
from segdeploy.core.errors import DataError
from segdeploy.data.preprocess import VOID_LABEL


class UnknownLabel(ValueError):
    """A mask value the dataset's class map does not know; the message names the value."""


def open_image(path: Path, max_megapixels: float = pixels.DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """An image or mask file decoded as stored, turned as its EXIF orientation says (core/pixels.py)."""
    try:
        return pixels.open_oriented(path, max_megapixels)
    except pixels.PixelError as exc:
        hint = "set data.max_megapixels (train --max-megapixels) to read it whole" if "megapixels" in str(exc) else None
        raise DataError(str(exc), hint) from None


class FormatError(ValueError):
    """An image or mask stored in a way segdeploy does not read; the message follows its path."""


def image_rgb8(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB (pixels.rgb8: 16-bit grey scaled by bit depth, float refused)."""
    try:
        return pixels.rgb8(image)
    except pixels.PixelError as exc:
        raise FormatError(str(exc)) from None


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
                          "grey levels (> 127 = foreground). Convert its colours to class indices, or give them in a "
                          "classes.json palette (--classes)")
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


def check_mask_values(mask: np.ndarray, num_classes: int, path: Path | str) -> None:
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != VOID_LABEL)]
    if bad.size:
        raise DataError(
            f"mask {path} has class id {int(bad[0])}, but the dataset has {num_classes} classes "
            f"(ids 0..{num_classes - 1}, {VOID_LABEL} = void); set data.num_classes, --void-label or a "
            "classes.json, or fix the mask"
        )
