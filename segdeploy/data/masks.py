"""Masks -> class ids: the one decoder every mask of every dataset passes through (MaskDecoder). The
conventions it accepts are in data/decode.py (binary_mask, index_mask) and the README's "Mask values"."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from segdeploy.core.errors import DataError
from segdeploy.data.decode import (FormatError, MaskValues, UnknownLabel, check_mask_values, describe_values,
                                   mask_levels)
from segdeploy.data.preprocess import VOID_LABEL


@dataclass(frozen=True)
class MaskDecoder:
    """Mask image -> uint8 class ids (255 void), checked against the number of classes. Every mask of every
    dataset passes through here: values that fit no accepted convention are refused with what was found
    and what to pass (README, "Mask values").

    `void_label`: a stored value meaning "ignore" (`--void-label`), mapped to 255 before decoding (a decoder
    with `reads_void`, a class map, maps it itself). `key` names the decoding for the dataset cache: a
    different decoding is a different cache entry. `retry`: how to read N class indices with this dataset."""

    decode: Callable[[Image.Image], np.ndarray]
    num_classes: int
    void_label: int | None = None
    key: str = ""
    retry: str = "pass --num-classes {n}"

    def __call__(self, image: Image.Image, path: Path) -> np.ndarray:
        void = None
        if self.void_label is not None and image.mode not in ("RGB", "RGBA") and not getattr(self.decode, "reads_void", False):
            void = mask_levels(image) == self.void_label
            image = _void_as_background(image, void) if void.any() else image
        try:
            labels = np.asarray(self.decode(image))
            if void is not None:
                labels = np.where(void, VOID_LABEL, labels)
            check_mask_values(labels, self.num_classes)
        except MaskValues as exc:
            raise DataError(f"mask {path} {self.explain(exc.values)}") from None
        except (UnknownLabel, FormatError) as exc:
            raise DataError(f"mask {path} {exc}") from None
        return labels.astype(np.uint8)

    def explain(self, values: np.ndarray) -> str:
        n, found = self.num_classes, describe_values(values)
        labels = values[values != VOID_LABEL]
        if 0 < labels.size <= 32 and labels.max() < VOID_LABEL:
            guess = f"class indices? {self.retry.format(n=int(labels.max()) + 1)}"
        else:
            guess = ("convert them to class indices (255 = void), map a stored value to void with --void-label, "
                     "or list the values in a classes.json (--classes)")
        if n == 2:
            return (f"holds {found}, which is not a binary mask (0/1, 0/255, 0/255 with soft edges, 0/1 with "
                    f"255 = void): {guess}")
        bad = labels[labels >= n]
        return (f"has class id {int(bad[0] if bad.size else labels.max())}, but the dataset has {n} classes "
                f"(ids 0..{n - 1}, {VOID_LABEL} = void); it holds {found}: {guess}")

    def check_dataset(self, seen: np.ndarray, where: Path) -> None:
        """After every mask: masks that hold nothing but background (0) and void (255) are a binary 0/255
        folder read with more classes (its foreground became void), or palette masks storing foreground as 255."""
        present = set(np.flatnonzero(seen).tolist())
        if present != {0, VOID_LABEL}:
            return
        if self.num_classes > 2:
            why = (f"with {self.num_classes} classes 255 is void (ignored), so no pixel of a class but 0 is left; "
                   "binary 0/255 masks (255 = foreground) are read as such with 2 classes (--num-classes 2)")
        else:
            why = "255 is void: palette PNGs are read as the indices they hold, store the foreground as index 1"
        raise DataError(f"the masks under {where} hold only 0 and 255: {why}")

    def cache_key(self) -> str:
        name = getattr(self.decode, "__qualname__", type(self.decode).__name__)
        return f"{name}|{self.key}|classes={self.num_classes}|void={self.void_label}"


def _void_as_background(image: Image.Image, void: np.ndarray) -> Image.Image:
    """The mask with its void pixels set to 0, so the decoder judges the other values (void is put back after)."""
    levels = mask_levels(image).copy()
    levels[void] = 0
    result = Image.fromarray(levels, "P") if image.mode == "P" else Image.fromarray(levels)
    if image.mode == "P":
        result.putpalette(image.getpalette())
    return result
