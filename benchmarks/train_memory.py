"""Peak memory of `segdeploy train` on a large folder dataset: 10,000 generated 512x512 images (JPEG) with
PNG masks, batch 8, U-Net ResNet-18. With the dataset cache the decoded dataset (7.9 GB of images + 2.6 GB
of masks at 512 px) lives in memory-mapped files, and training maps only the rows of each batch, so the
process's peak RSS is bounded by the batch, not the dataset. Not a test: results go to
benchmarks/results/train_memory.json (goal: peak RSS under 4 GB).

The dataset is generated once under --work (ROOT/train/{images,masks} with --images images,
ROOT/val/{images,masks} with --val-images). Then `python -m segdeploy train` runs twice in fresh processes,
cold (an empty cache folder: decodes and writes every image) and warm (maps the cache), each for
--max-steps optimiser steps and one validation pass; the peak RSS of each process (ru_maxrss, VmHWM) is read
after it exits.

    python benchmarks/train_memory.py --images 10000 --size 512 --batch-size 8 --work /tmp/segdeploy-memory
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def generate(root: Path, count: int, size: int, seed: int) -> None:
    """Shapes on textured backgrounds (as the built-in synthetic data): RGB JPEG images, 0/255 PNG masks."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for index in range(count):
        image_path, mask_path = root / "images" / f"{index:05d}.jpg", root / "masks" / f"{index:05d}.png"
        if image_path.exists() and mask_path.exists():
            continue
        rng = np.random.default_rng([seed, index])
        image = rng.integers(0, 90, size=3).astype(np.float32) + 40 * np.sin(
            6.28 * (xx * rng.uniform(1, 4) + yy * rng.uniform(1, 4)))[..., None]
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.22)
        region = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
        image[region] = rng.integers(120, 255, size=3)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(image_path, quality=90)
        Image.fromarray(region.astype(np.uint8) * 255).save(mask_path)


def train_peak_rss(args, root: Path, cache: Path, output: Path) -> dict:
    env = {**os.environ, "SEGDEPLOY_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    env.pop("SEGDEPLOY_NO_CACHE", None)
    command = [sys.executable, "-m", "segdeploy", "train", "--dataset", "folder", "--data-root", str(root),
               "--size", str(args.size), "--batch-size", str(args.batch_size), "--epochs", "1",
               "--max-steps", str(args.max_steps), "--threads", str(args.threads), "--device", "cpu",
               "--augment", "standard", "--output", str(output), "--overwrite"]
    started = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"training failed ({status}): {' '.join(command)}")
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "wall_seconds": time.time() - started,
            "children_max_before_mb": before / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="/tmp/segdeploy-memory")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and the cache")
    parser.add_argument("--output", default="benchmarks/results/train_memory.json")
    args = parser.parse_args()
    work = Path(args.work)
    started = time.time()
    generate(work / "data" / "train", args.images, args.size, seed=0)
    generate(work / "data" / "val", args.val_images, args.size, seed=1)
    generation_seconds = time.time() - started
    shutil.rmtree(work / "cache", ignore_errors=True)
    cold = train_peak_rss(args, work / "data", work / "cache", work / "run")
    print(f"cold: {cold}", flush=True)
    warm = train_peak_rss(args, work / "data", work / "cache", work / "run")
    print(f"warm: {warm}", flush=True)
    cache_bytes = sum(p.stat().st_size for p in (work / "cache").rglob("*.npy"))
    from segdeploy.core import fileio
    from segdeploy.core.env import environment

    fileio.write_json(args.output, {
        "benchmark": "train_memory", "settings": vars(args), "generation_seconds": generation_seconds,
        "dataset_bytes_decoded": args.images * args.size * args.size * 4, "cache_bytes_on_disk": cache_bytes,
        "cold": cold, "warm": warm, "goal": "peak RSS < 4096 MB", "load_average": os.getloadavg(),
        "environment": environment(args.threads)})
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
