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


BINARY_EDGE_PX = 12  # grey levels this close to a 0/255 edge are JPEG ringing (8x8 blocks) or anti-aliasing
LOSSY_FORMATS = ("JPEG", "WEBP")  # formats whose stored values are approximations: 0/1/255 may be noise


class MaskValues(ValueError):
    """Mask values that fit no accepted convention; MaskDecoder words the message (it knows the file, the
    class count and what to pass)."""

    def __init__(self, values: np.ndarray, num_classes: int | None = None):
        self.values = np.asarray(values)
        self.num_classes = num_classes
        super().__init__(f"holds {describe_values(self.values)}")


def describe_values(values: np.ndarray, limit: int = 8) -> str:
    """'0, 1, 2' or '0, 1, 2, 3, 4, 5, 6, 7, ... 200 (57 values)'."""
    values = [int(v) for v in np.unique(values)]
    if len(values) <= limit:
        return ", ".join(map(str, values))
    return f"{', '.join(map(str, values[:limit]))}, ... {values[-1]} ({len(values)} values)"


def mask_levels(image: Image.Image) -> np.ndarray:
    """The values a single-channel mask stores: 8- or 16-bit as they are, a 1-bit mask as 0/1, a grey RGB(A)
    mask as its grey level (a colour-coded one is refused, see grey_mask)."""
    if image.mode == "1":
        return np.asarray(image).astype(np.uint8)
    if image.mode in ("L", "P"):
        return np.asarray(image)
    if image.mode == "I" or image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.int32 if image.mode == "I" else np.uint16)  # native byte order
    return np.asarray(grey_mask(image).convert("L"))


def binary_mask(image: Image.Image) -> np.ndarray:
    """Binary masks (background / foreground), one of the accepted conventions (README, "Mask values"):
    0/1 as class indices; 0/1 with 255 void (lossless files); 0/255 or 0/65535 (> half = foreground);
    0/255 with other grey levels only along the foreground's edges (JPEG, anti-aliasing), > 127 foreground;
    palette PNGs as the indices they hold (0, 1, 255 void). Anything else (0, 1, 2; 0/128; grey levels away
    from an edge) raises MaskValues: it is not a binary mask, and thresholding it would be silently wrong."""
    levels = mask_levels(image)
    values = np.unique(levels)
    present = set(values.tolist())
    if image.mode == "P" or present <= {0, 1}:
        return levels  # palette indices are checked against the class count like any index mask
    if 1 in present and present <= {0, 1, 255} and image.format not in LOSSY_FORMATS:
        return levels
    if present <= {0, 65535}:
        return (levels > 0).astype(np.uint8)
    if 0 <= values[0] and values[-1] <= 255 and _binary_with_soft_edges(levels):
        return (levels > 127).astype(np.uint8)
    raise MaskValues(values)


def _binary_with_soft_edges(levels: np.ndarray) -> bool:
    """0/255, where every other grey level lies within BINARY_EDGE_PX of an edge between the two and each
    side (> 127, <= 127) is mostly its extreme (255, 0)."""
    between = (levels != 0) & (levels != 255)
    if not between.any():
        return True
    foreground = levels > 127
    if not foreground.any():
        return False  # grey levels without a foreground (0, 1, 2): class indices, not a soft edge
    for side in (levels[foreground], levels[~foreground]):  # each side mostly its extreme (not 0/128)
        if side.size and np.bincount(side, minlength=256)[[0, 255]].max() * 2 < side.size:
            return False
    from scipy import ndimage

    size = 2 * BINARY_EDGE_PX + 1
    near_edge = ndimage.maximum_filter(foreground, size) != ndimage.minimum_filter(foreground, size)
    return not (between & ~near_edge).any()


def index_mask(image: Image.Image) -> np.ndarray:
    """Class-index masks (mode L, P, I;16, 1-bit, grey RGB; e.g. VOC palette PNGs): the stored index is the
    class. 16/32-bit ids stay as they are until checked, so 300 cannot wrap to 44."""
    return mask_levels(image)


def check_mask_values(mask: np.ndarray, num_classes: int) -> None:
    """Raise MaskValues when a decoded mask holds an id >= num_classes other than void (255)."""
    values = np.unique(mask)
    if ((values >= num_classes) & (values != VOID_LABEL)).any():
        raise MaskValues(values, num_classes)
