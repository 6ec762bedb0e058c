"""Feature cache for frozen-encoder models: run the encoder once per image, train the head from FP16 features.

A model family qualifies when its registry entry says `ModelSpec.frozen_encoder`; its model then has
`encode(images) -> list[Tensor]` / `decode(features, size) -> logits` (see `segdeploy.models.sam2.SAM2Segmenter`). Each image's feature
maps are flattened into one FP16 row, kept in memory when all rows fit under `train.feature_cache_mb`,
otherwise in a memory-mapped file under RUN/cache/ (removed when training ends). With augmentation on,
the images change every epoch, so the cache is off and the encoder runs every step.
"""

from __future__ import annotations

import math
import shutil
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segdeploy.core import fileio
from segdeploy.core.config import Config
from segdeploy.core.progress import console, track
from segdeploy.core.size import input_hw

CACHE_INFO_FILE = "feature_cache.json"


@dataclass
class CacheInfo:
    storage: str  # memory | file
    dtype: str
    images: int
    bytes: int
    build_seconds: float
    shapes: list[list[int]]  # per-image shape of each cached feature map
    path: str | None = None


def supports_cache(cfg: Config) -> bool:
    """The model family has a frozen encoder (models/registry.py ModelSpec.frozen_encoder)."""
    from segdeploy.models.registry import MODELS

    return MODELS[cfg.model.name].frozen_encoder


class CachedFeatures(torch.utils.data.Dataset):
    """(flat FP16 features, int64 mask) per image, in the order of the wrapped dataset."""

    def __init__(self, rows: torch.Tensor | np.ndarray, dataset):
        self.rows = rows
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.rows[index]
        row = torch.from_numpy(np.array(row)) if isinstance(row, np.ndarray) else row
        return row, torch.from_numpy(self.dataset.masks[index].astype(np.int64))


class HeadFromFeatures(nn.Module):
    """Runs only the head: flat cached features [N, D] -> logits [N, C, height, width]."""

    def __init__(self, model: nn.Module, shapes: list[list[int]], size: int | list[int]):
        super().__init__()
        self.model = model
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.hw = input_hw(size)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        parts = torch.split(rows.float(), self.sizes, dim=1)
        features = [p.reshape(rows.shape[0], *shape) for p, shape in zip(parts, self.shapes)]
        return self.model.decode(features, self.hw)


@torch.inference_mode()
def feature_shapes(model: nn.Module, size: int | list[int], device: str) -> list[list[int]]:
    model.eval()
    probe = torch.zeros(1, 3, *input_hw(size), device=device)
    return [list(f.shape[1:]) for f in model.encode(probe)]


@torch.inference_mode()
def encode_dataset(model: nn.Module, dataset, rows, batch_size: int, device: str, amp: bool,
                   description: str) -> None:
    """Fill `rows` (tensor or memmap [N, D], FP16) with the flattened encoder features of `dataset`."""
    model.eval()
    starts = range(0, len(dataset), batch_size)
    for start in track(starts, description, total=len(starts)):
        indices = range(start, min(start + batch_size, len(dataset)))
        images = torch.from_numpy(dataset.normalized_batch(indices)).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
            features = model.encode(images)
        flat = torch.cat([f.reshape(f.shape[0], -1) for f in features], 1).to("cpu", torch.float16)
        if isinstance(rows, np.ndarray):
            rows[start:start + len(indices)] = flat.numpy()
        else:
            rows[start:start + len(indices)] = flat


def build_feature_cache(model: nn.Module, datasets: dict, size: int, batch_size: int, device: str,
                        amp: bool, budget_mb: int, cache_dir: Path) -> tuple[dict, CacheInfo]:
    """Encode every image of every split once; returns {split: CachedFeatures} and what it cost."""
    start = time.perf_counter()
    shapes = feature_shapes(model, size, device)
    width = sum(math.prod(s) for s in shapes)
    total_images = sum(len(d) for d in datasets.values())
    total_bytes = total_images * width * 2
    in_memory = total_bytes <= budget_mb * 2**20
    cached = {}
    for split, dataset in datasets.items():
        if in_memory:
            rows = torch.empty(len(dataset), width, dtype=torch.float16)
        else:
            cache_dir.mkdir(parents=True, exist_ok=True)
            rows = np.lib.format.open_memmap(cache_dir / f"{split}-features.npy", mode="w+",
                                             dtype=np.float16, shape=(len(dataset), width))
        encode_dataset(model, dataset, rows, batch_size, device, amp,
                       f"caching {split} features ({len(dataset)} images)")
        if isinstance(rows, np.ndarray):
            rows.flush()
        cached[split] = CachedFeatures(rows, dataset)
    if not in_memory:
        # A cache, not an artefact: delete the files once the datasets that map them are gone.
        weakref.finalize(cached["train"], shutil.rmtree, str(cache_dir), True)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    info = CacheInfo(storage="memory" if in_memory else "file", dtype="float16", images=total_images,
                     bytes=total_bytes, build_seconds=round(time.perf_counter() - start, 3), shapes=shapes,
                     path=None if in_memory else str(cache_dir))
    return cached, info


def prepare_feature_cache(model: nn.Module, cfg: Config, train_set, val_set, device: str, run_path: Path
                          ) -> tuple[nn.Module, object, object, CacheInfo | None]:
    """The train loop's hook: (module to call on batches, train data, val data, cache info or None).

    Without a cache this returns `model` and the datasets unchanged.
    """
    if not supports_cache(cfg) or not cfg.train.feature_cache:
        return model, train_set, val_set, None
    if train_set.augment:
        console.print(f"feature cache off: training augmentation ({cfg.data.augment!r}) changes the images every "
                      "epoch, so the frozen encoder runs on every batch (--augment none to use the cache)")
        return model, train_set, val_set, None
    amp = device.startswith("cuda") and cfg.train.amp
    cached, info = build_feature_cache(model, {"train": train_set, "val": val_set}, cfg.data.size,
                                       cfg.train.batch_size, device, amp, cfg.train.feature_cache_mb,
                                       run_path / "cache")
    fileio.write_json(run_path / CACHE_INFO_FILE, asdict(info))
    console.print(f"feature cache: {info.images} images, {info.bytes / 2**20:.1f} MiB FP16 in {info.storage}, "
                  f"built in {info.build_seconds:.1f}s")
    return HeadFromFeatures(model, info.shapes, cfg.data.size), cached["train"], cached["val"], info
