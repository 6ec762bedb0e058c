"""Files to pixels and logits to masks: the one decode path of eval, train, `segdeploy predict` and a
deployed bundle's predict.py.

Imports only the standard library, numpy and Pillow: a bundle's predict.py carries a copy of this file, so
that a model deployed without segdeploy turns a file into exactly the pixels it was measured on.
Orientation: the EXIF orientation is applied (as image viewers do) to images and masks alike. Resizing never
uses JPEG `draft()`, whose result depends on whether the image was loaded before (one behaviour per file).
"""

from __future__ import annotations

import glob
import io
import os
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_MEGAPIXELS = 150.0  # ~450 MB as RGB; larger images need the setting raised (no tiling)
EXIF_ORIENTATION = 0x0112
LIST_SUFFIXES = (".txt",)
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg")
GLOB_CHARACTERS = "*?["
MASK_SUFFIX = ".png"

_OPEN_LOCK = threading.Lock()  # PIL's own size limit is a module global: set and restored under this lock


class PixelError(ValueError):
    """A file that cannot become pixels (unreadable, too large, a float image); the message names it."""


def open_oriented(path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """The decoded image as stored (any mode), turned as its EXIF orientation says; larger than
    `max_megapixels` is refused before decoding."""
    try:
        with _OPEN_LOCK:  # our limit replaces PIL's (which would warn, then raise, at other sizes)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        width, height = image.size
        if width * height > max_megapixels * 1e6:
            image.close()
            raise PixelError(f"{path} is {width}x{height} pixels ({width * height / 1e6:.3g} megapixels), over the "
                             f"limit of {max_megapixels:g} megapixels (images are not tiled)")
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, PixelError):
            raise
        raise PixelError(f"cannot read image {path}: {_reason(exc)}") from None
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except (SyntaxError, ValueError, OSError, TypeError, IndexError):
        orientation = 1  # unreadable EXIF: shown as stored, as viewers do
    return ImageOps.exif_transpose(image) if orientation not in (1, None) else image


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file (or a format Pillow does not read)"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def rgb8(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB. 16-bit grey images are scaled by their bit depth (value / 257), not clipped
    at 255 as PIL's convert("RGB") does (which makes them near-white); float images are refused."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise PixelError("has 32-bit pixel values: save it with 8 or 16 bits per channel")
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        raise PixelError("is a floating-point image: save it with 8 or 16 bits per channel")
    return image if image.mode == "RGB" else image.convert("RGB")


def open_rgb(path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """A file as an oriented 8-bit RGB PIL image (PixelError naming the file otherwise)."""
    image = open_oriented(path, max_megapixels)
    try:
        return rgb8(image)
    except PixelError as exc:
        raise PixelError(f"image {path} {exc}") from None


def read_rgb(path: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> np.ndarray:
    """A file as oriented uint8 H x W x 3 RGB."""
    return np.asarray(open_rgb(path, max_megapixels), dtype=np.uint8)


def resize_rgb(image: np.ndarray | Image.Image, hw: tuple[int, int]) -> np.ndarray:
    """uint8 H x W x 3 RGB (array or RGB PIL image) -> uint8 at (height, width), PIL bilinear."""
    height, width = hw
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    return np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.uint8)


def normalize(images: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 NHWC or HWC RGB -> float32 NCHW or CHW, scaled to [0, 1] then mean/std normalised."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def _linear_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of bilinear resampling with half-pixel centres (torch's
    F.interpolate(mode="bilinear", align_corners=False), MMSegmentation's resize)."""
    source = (np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5
    source = np.maximum(source, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    return low, high, (source - low).astype(np.float32)


def resize_logits(logits: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """float C x H x W -> float32 C x h x w, bilinear with half-pixel centres (no antialiasing)."""
    height, width = hw
    logits = np.asarray(logits, dtype=np.float32)
    y0, y1, wy = _linear_taps(logits.shape[1], height)
    x0, x1, wx = _linear_taps(logits.shape[2], width)
    rows = logits[:, y0, :] * (1 - wy)[None, :, None] + logits[:, y1, :] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


def logits_to_mask(logits: np.ndarray, hw: tuple[int, int], rows_per_step: int = 256) -> np.ndarray:
    """The class-index mask at (height, width): argmax of the bilinear-resized logits, computed a band of
    rows at a time so that a large original size does not hold C x h x w floats at once. Two classes:
    resizing is linear, so the sign of the resized difference (logit 1 - logit 0) is the argmax (ties -> 0)
    at half the work."""
    height, width = hw
    logits = np.asarray(logits, dtype=np.float32)
    dtype = np.uint8 if logits.shape[0] <= 256 else np.int32
    binary = logits.shape[0] == 2
    planes = logits[1:2] - logits[0:1] if binary else logits
    y0, y1, wy = _linear_taps(planes.shape[1], height)
    x0, x1, wx = _linear_taps(planes.shape[2], width)
    columns = planes[:, :, x0] * (1 - wx) + planes[:, :, x1] * wx  # C x H x w
    mask = np.empty((height, width), dtype)
    for start in range(0, height, rows_per_step):
        band = slice(start, min(start + rows_per_step, height))
        top, bottom, weight = columns[:, y0[band], :], columns[:, y1[band], :], wy[band][None, :, None]
        resized = top * (1 - weight) + bottom * weight
        mask[band] = resized[0] > 0 if binary else np.argmax(resized, axis=0)
    return mask


def upsample_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """h x w class-index mask -> (height, width), PIL's nearest neighbour (labels stay labels)."""
    height, width = hw
    mode_dtype = np.uint8 if mask.dtype == np.uint8 else np.int32
    resized = Image.fromarray(np.ascontiguousarray(mask, dtype=mode_dtype)).resize((width, height), Image.NEAREST)
    return np.asarray(resized, dtype=mask.dtype)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_sources(source: str | Path) -> list[Path]:
    """The image files SOURCE names: an image file; a folder (recursively, files with an image extension,
    hidden folders skipped); a glob pattern (every file it matches); a .txt file listing one path a line
    (relative to the list's folder; '#' starts a comment). Raises PixelError when SOURCE does not exist."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        found = [p for p in path.rglob("*") if _is_image(p) and p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        return sorted(found)
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        listed = []
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                entry = Path(line).expanduser()
                listed.append(entry if entry.is_absolute() else path.parent / entry)
        return listed
    if path.exists():
        return [path]
    if any(c in text for c in GLOB_CHARACTERS):
        return sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    raise PixelError(f"{text} does not exist (give an image, a folder, a glob pattern or a .txt list of paths)")


def is_video(source: str | Path) -> bool:
    path = Path(str(source)).expanduser()
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def frame_name(index: int) -> str:
    """The mask file of a video's frame `index` (counted from 1)."""
    return f"frame_{index:06d}{MASK_SUFFIX}"


def video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """A video's frames as uint8 H x W x 3 RGB, decoded by PyAV (the optional `av` package)."""
    import av  # only videos need it

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, IndexError) as exc:
        raise PixelError(f"cannot read video {path}: {_reason(exc)}") from None


def source_name(source: str | Path) -> str:
    """A folder name for SOURCE's outputs: the folder's or file's name, a glob's fixed folder."""
    text = str(source).rstrip("/") or "/"
    if any(c in text for c in GLOB_CHARACTERS) and not Path(text).exists():
        parts = Path(text).parts
        fixed = [p for p in parts[:next(i for i, p in enumerate(parts) if any(c in p for c in GLOB_CHARACTERS))]]
        text = str(Path(*fixed)) if fixed else "."
    path = Path(text).expanduser().resolve()
    name = path.name if path.is_dir() else path.stem
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip(".") or "source"


def output_names(paths: list[Path], source: str | Path) -> list[Path]:
    """The mask file (relative to the output folder) of each image: its path below a folder SOURCE (or below
    the folder all listed files share) with the suffix .png; two files differing only in their extension
    (a.jpg, a.png) keep it (a.jpg.png, a.png.png)."""
    folder = Path(str(source)).expanduser()
    resolved = [p.expanduser().resolve() for p in paths]
    if folder.is_dir():
        base = folder.resolve()
    elif len(resolved) == 1:
        base = resolved[0].parent
    else:
        base = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    relative = [p.relative_to(base) for p in resolved]
    stems = [r.with_suffix("") for r in relative]
    clashing = {stem for stem in stems if stems.count(stem) > 1}
    return [Path(f"{r}{MASK_SUFFIX}") if stem in clashing else stem.with_name(stem.name + MASK_SUFFIX)
            for r, stem in zip(relative, stems)]


def default_palette(num_classes: int) -> np.ndarray:
    """Distinct colours for classes without a class map (Pascal VOC's bit-interleaved palette)."""
    palette = np.zeros((num_classes, 3), np.uint8)
    for index in range(num_classes):
        value, colour = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette[index] = colour
    return palette


def mask_image(mask: np.ndarray, palette: np.ndarray | None = None) -> Image.Image:
    """A class-index mask as a PIL image: a palette PNG ("P") when a palette is given, else grey ("L");
    more than 256 classes: 16-bit grey."""
    if mask.max(initial=0) > 255:
        return Image.fromarray(mask.astype(np.uint16))
    image = Image.fromarray(mask.astype(np.uint8), "L")
    if palette is not None:  # an "L" image becomes "P" with the same indices
        image.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())
    return image


def mask_png(mask: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """The PNG bytes of a class-index mask (pixel value = class index, the palette only colours it)."""
    buffer = io.BytesIO()
    mask_image(mask, palette).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """uint8 H x W x 3 image with its mask's class colours blended in (class 0 left as it is)."""
    colours = np.asarray(palette if palette is not None else default_palette(int(mask.max(initial=0)) + 1),
                         np.float32)
    mask = np.asarray(mask).astype(np.int64)
    blended = image.astype(np.float32)
    foreground = (mask > 0) & (mask < len(colours))
    blended[foreground] = (1 - alpha) * blended[foreground] + alpha * colours[mask[foreground]]
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
