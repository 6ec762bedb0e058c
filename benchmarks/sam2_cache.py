"""Epoch time of SAM2 (frozen Hiera encoder + conv head) training with and without the feature cache.

Runs the real training loop (`segdeploy.training.loop.train`) twice on Kvasir-SEG, once encoding every batch and
once from the FP16 feature cache, and compares the per-epoch `seconds` of history.csv (training steps +
validation, checkpoint writes excluded). The cache build is reported separately. Not a test: the goal
(>= 10x per epoch after the first) is recorded in the results, never asserted.

    python benchmarks/sam2_cache.py --data-root ../shared/datasets/kvasir-seg --images 200 --size 256
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdeploy.core import fileio  # noqa: E402
from segdeploy.core.config import Config  # noqa: E402
from segdeploy.core.env import environment  # noqa: E402
from segdeploy.training.loop import train  # noqa: E402

GOAL = 10.0


def make_config(args, feature_cache: bool, epochs: int) -> Config:
    cfg = Config()
    cfg.data.dataset = "kvasir"
    cfg.data.root = args.data_root
    cfg.data.size = args.size
    cfg.data.max_images = args.images
    cfg.model.name = "sam2"
    cfg.model.encoder = args.encoder
    cfg.model.encoder_weights = args.encoder_weights
    cfg.train.epochs = epochs
    cfg.train.batch_size = args.batch_size
    cfg.train.lr = 1e-3
    cfg.train.device = args.device
    cfg.train.threads = args.threads
    cfg.train.feature_cache = feature_cache
    return cfg


def epoch_seconds(run_path: Path) -> list[float]:
    with open(run_path / "history.csv") as f:
        return [float(row["seconds"]) for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/kvasir-seg")
    parser.add_argument("--images", type=int, default=200, help="cap per split (train; val has 120 at most)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--encoder", default="hiera-t")
    parser.add_argument("--encoder-weights", default="none")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs-uncached", type=int, default=2)
    parser.add_argument("--epochs-cached", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "sam2_cache.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sam2-cache-bench-") as tmp:
        uncached_run = train(make_config(args, False, args.epochs_uncached), Path(tmp) / "uncached")
        uncached = epoch_seconds(uncached_run.path)
        cached_run = train(make_config(args, True, args.epochs_cached), Path(tmp) / "cached")
        cached = epoch_seconds(cached_run.path)
        cache = fileio.read_json(cached_run.path / "feature_cache.json")

    # Epochs after the first: the first uncached epoch includes one-off warm-up (allocator, kernels).
    uncached_steady = statistics.mean(uncached[1:] or uncached)
    cached_steady = statistics.mean(cached[1:] or cached)
    speedup = uncached_steady / cached_steady
    result = {
        "benchmark": "sam2_feature_cache",
        "model": "sam2", "encoder": args.encoder, "encoder_weights": args.encoder_weights,
        "dataset": "kvasir", "size": args.size, "max_images_per_split": args.images,
        "cached_images": cache["images"], "batch_size": args.batch_size, "device": args.device,
        "epoch_seconds": {"uncached": uncached, "cached": cached},
        "epoch_seconds_after_first": {"uncached": uncached_steady, "cached": cached_steady},
        "speedup_after_first_epoch": speedup,
        "speedup_first_epoch_including_cache_build": uncached[0] / (cached[0] + cache["build_seconds"]),
        "cache": cache,
        "goal_speedup": GOAL, "goal_met": speedup >= GOAL,
        "note": "epoch seconds = training steps + validation (history.csv), checkpoint writes excluded",
        "environment": environment(args.threads),
    }
    fileio.write_json(args.output, result)
    print(f"{args.encoder} {args.size}px, {cache['images']} images (train+val), batch {args.batch_size}, {args.device}")
    print(f"  uncached epochs (s): {', '.join(f'{s:.1f}' for s in uncached)}")
    print(f"  cached epochs   (s): {', '.join(f'{s:.2f}' for s in cached)}"
          f"  (cache: {cache['bytes'] / 2**20:.1f} MiB {cache['storage']}, built in {cache['build_seconds']:.1f}s)")
    print(f"  speed-up after the first epoch: {speedup:.1f}x (goal {GOAL:.0f}x: {'met' if speedup >= GOAL else 'NOT met'})")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
