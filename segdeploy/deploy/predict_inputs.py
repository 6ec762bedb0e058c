"""What `segdeploy predict` reads and writes besides the model: SOURCE as a list of items (image files or a
video's frames), the run's classes and palette, the variant to run, and predictions.json records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from segdeploy.core import pixels
from segdeploy.core.config import Config, PredictConfig
from segdeploy.core.errors import DataError
from segdeploy.core.rundir import RunDir
from segdeploy.runtime.variants import REFERENCE, Variant, parse_variant


@dataclass
class Item:
    """One image to predict: where it comes from, the mask file it gets, how to decode it."""

    source: str  # the file, or "video.mp4#frame=12"
    mask: Path  # relative to the output folder
    load: Callable[[], Image.Image]


@dataclass
class Source:
    items: Iterator[Item]
    total: int | None  # None: a video whose frame count its container does not give


def open_source(source: str, max_megapixels: float, exclude: Path | None = None) -> Source:
    """SOURCE as items (files inside `exclude`, the output folder, left out); one-line DataError (exit 2)
    when it does not exist or holds no image."""
    try:
        if pixels.is_video(source):
            return Source(_video_items(source), _frame_count(source))
        paths = pixels.list_sources(source)
    except (pixels.PixelError, OSError) as exc:
        raise DataError(str(exc)) from None
    if exclude is not None:
        inside = exclude.expanduser().resolve()
        paths = [p for p in paths if not p.resolve().is_relative_to(inside)]
    if not paths:
        raise DataError(f"{source} holds no images (extensions: {', '.join(pixels.IMAGE_EXTENSIONS)}; "
                        f"videos: {', '.join(pixels.VIDEO_EXTENSIONS)})")
    names = pixels.output_names(paths, source)
    items = (Item(str(path), name, lambda path=path: pixels.open_rgb(path, max_megapixels))
             for path, name in zip(paths, names))
    return Source(items, len(paths))


def _video_items(path: str) -> Iterator[Item]:
    for index, frame in enumerate(pixels.video_frames(path), start=1):
        image = Image.fromarray(frame, "RGB")
        yield Item(f"{path}#frame={index}", Path(pixels.frame_name(index)), lambda image=image: image)


def _frame_count(path: str) -> int | None:
    import av

    try:
        with av.open(path) as container:
            return int(container.streams.video[0].frames) or None
    except (av.error.FFmpegError, IndexError) as exc:
        raise DataError(f"cannot read video {path}: {exc}") from None


def chosen_variant(run: RunDir, cfg: PredictConfig) -> tuple[Variant, str]:
    """--backend/--precision; else the variant `segdeploy deploy` chose (RUN/deploy/manifest.json); else
    torch fp32. Returns the variant and where the choice came from."""
    if cfg.backend is not None:
        return parse_variant(cfg.backend, cfg.precision or "fp32"), "--backend"
    manifest = run.read_deploy_manifest()
    if manifest and manifest.get("variant"):
        return parse_variant(manifest["variant"], cfg.precision or manifest.get("precision") or "fp32"), \
            str(run.deploy_manifest)
    if cfg.precision not in (None, "fp32"):
        raise DataError(f"--precision {cfg.precision} needs a backend that runs exported graphs "
                        "(e.g. --backend onnxruntime)")
    return REFERENCE, "default (torch fp32; no RUN/deploy/manifest.json)"


def class_palette(cfg: Config) -> np.ndarray | None:
    """The palette of the run's class map (folder datasets with classes.json), else None."""
    if cfg.data.dataset != "folder" or not (cfg.data.root or cfg.data.classes):
        return None
    from segdeploy.core.errors import SegdeployError
    from segdeploy.data.classmap import find_class_map

    try:
        class_map = find_class_map(Path(cfg.data.root or "").expanduser(), cfg.data.classes, cfg.data.void_label)
    except (SegdeployError, OSError):
        return None  # the dataset has moved: masks without a palette, indices unchanged
    return None if class_map is None else class_map.palette


def record_of(item: Item, mask: np.ndarray, class_names: list[str], seconds: dict | None) -> dict:
    """predictions.json's entry of one image: its size, per-class pixel fractions and timing."""
    counts = np.bincount(mask.reshape(-1).astype(np.int64), minlength=len(class_names))
    fractions = {name: round(float(c) / mask.size, 6) for name, c in zip(class_names, counts)}
    return {"source": item.source, "mask": str(item.mask), "height": int(mask.shape[0]),
            "width": int(mask.shape[1]), "class_fractions": fractions, "seconds": seconds}


def existing_record(item: Item, output: Path, class_names: list[str], previous: dict) -> dict:
    """The entry of an image whose mask a previous run wrote: its old record, else read from the mask."""
    if str(item.mask) in previous:
        return previous[str(item.mask)]
    return record_of(item, np.asarray(Image.open(output / item.mask)), class_names, None)
