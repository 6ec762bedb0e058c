"""Time HD95 over the Kvasir-SEG validation images (120 at 256x256 by default).

Predictions come from a trained run (`--run RUN`) or, by default, from the truth masks moved by a
few pixels and grown or shrunk (so every pair has a non-trivial surface distance). Loading the
images is not timed; only the HD95 of every (image, class) pair is. Writes a JSON result.

    python benchmarks/hd95_speed.py --data-root ../shared/datasets/kvasir-seg
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdeploy.core import fileio  # noqa: E402
from segdeploy.core.config import DataConfig  # noqa: E402
from segdeploy.data.registry import build_dataset  # noqa: E402
from segdeploy.evaluation.hd95 import hd95_images, summarize_hd95  # noqa: E402
from segdeploy.bench.timing import time_iterations  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process: unlike wall time, it barely grows when other jobs share the cores."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def perturbed(masks: np.ndarray, seed: int = 0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    preds = np.empty_like(masks)
    for i, mask in enumerate(masks):
        moved = np.roll(mask, tuple(rng.integers(-6, 7, size=2)), axis=(0, 1))
        grow = int(rng.integers(-3, 4))
        if grow > 0:
            moved = ndimage.binary_dilation(moved, iterations=grow)
        elif grow < 0:
            moved = ndimage.binary_erosion(moved, iterations=-grow)
        preds[i] = moved
    return preds


def predictions_of_run(run_path: str, dataset) -> np.ndarray:
    from segdeploy.core.rundir import RunDir
    from segdeploy.runtime.base import iterate_outputs, predicted_labels
    from segdeploy.runtime.variants import load_runner

    runner = load_runner("torch", RunDir.open(run_path))
    preds = np.empty_like(dataset.masks)
    for indices, output in iterate_outputs(runner, dataset):
        preds[indices.start:indices.stop] = predicted_labels(runner, output)
    return preds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/kvasir-seg")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--run", help="take predictions from this run (its torch model) instead of perturbed truth")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="runs/benchmarks/hd95_speed.json")
    args = parser.parse_args()

    dataset = build_dataset(DataConfig(dataset="kvasir", root=args.data_root, size=args.size), "val")
    truths = dataset.masks
    preds = predictions_of_run(args.run, dataset) if args.run else perturbed(truths)
    summary = summarize_hd95(*hd95_images(preds, truths, dataset.num_classes))
    cpu_before = cpu_seconds()
    seconds = time_iterations(lambda: hd95_images(preds, truths, dataset.num_classes), lambda: None,
                              warmup=1, iters=args.repeats)
    cpu_per_run = (cpu_seconds() - cpu_before) / (args.repeats + 1)
    seconds = np.asarray(seconds, np.float64) / 1e3  # time_iterations reports milliseconds
    result = {
        "images": len(truths), "size": args.size, "classes": dataset.num_classes,
        "predictions": f"run {args.run}" if args.run else "perturbed truth (shift <= 6 px, grow/shrink <= 3 px)",
        "pairs": summary.pairs, "undefined_pairs": summary.undefined_pairs, "hd95_px": summary.mean,
        "seconds": {"min": float(seconds.min()), "median": float(np.median(seconds)), "max": float(seconds.max())},
        "cpu_seconds_per_run": cpu_per_run,
        "repeats": args.repeats, "load_average_1min": os.getloadavg()[0], "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
    }
    fileio.write_json(args.output, result)
    print(json.dumps(result, indent=2))
    print(f"HD95 over {len(truths)} images at {args.size}x{args.size}: median {result['seconds']['median']:.3f} s "
          f"(goal < 2 s), {cpu_per_run:.3f} s CPU per run, load average {result['load_average_1min']:.1f} "
          f"on {os.cpu_count()} cores -> {args.output}")


if __name__ == "__main__":
    main()
