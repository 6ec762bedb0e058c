"""Which augmentation preset trains best on Kvasir-SEG from random init: short CPU runs, one per preset
(and one FP32 run beside the bf16 ones, for the effect of bf16 autocast on mIoU).

Every run is the real training loop (`segdeploy.training.loop.train`) with the same seed, data, model
(U-Net ResNet-18, random init) and schedule; only the preset (or the autocast) differs. Records per-epoch
validation mIoU, the best and the last epoch's, and seconds per epoch, in
benchmarks/results/augment_presets.json. Not a test.

    python benchmarks/augment_presets.py --data-root ../shared/datasets/kvasir-seg --size 96 --images 320 --epochs 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdeploy.core import fileio  # noqa: E402
from segdeploy.core.config import Config  # noqa: E402
from segdeploy.core.env import environment  # noqa: E402
from segdeploy.training.loop import train  # noqa: E402


def make_config(args, preset: str, amp: bool) -> Config:
    cfg = Config()
    cfg.data.dataset, cfg.data.root, cfg.data.size = "kvasir", args.data_root, args.size
    cfg.data.max_images, cfg.data.augment = args.images, preset
    cfg.model.name, cfg.model.encoder, cfg.model.encoder_weights = "unet", "resnet18", "none"
    cfg.train.epochs, cfg.train.batch_size, cfg.train.lr = args.epochs, args.batch_size, args.lr
    cfg.train.loss, cfg.train.scheduler, cfg.train.weight_decay = "dice-ce", "cosine", 1e-4
    cfg.train.amp, cfg.train.channels_last, cfg.train.threads = amp, True, args.threads
    cfg.train.device, cfg.train.seed = "cpu", 0
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/kvasir-seg")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--images", type=int, default=320, help="training images (validation: all 120)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default="none,flip,standard,strong,standard:fp32",
                        help="presets; PRESET:fp32 trains without autocast")
    parser.add_argument("--output", default="benchmarks/results/augment_presets.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.runs.split(","):
            preset, _, precision = spec.partition(":")
            started, load = time.time(), os.getloadavg()
            run = train(make_config(args, preset, amp=precision != "fp32"), Path(tmp) / spec.replace(":", "-"))
            history = run.read_history()
            mious = [row["val_miou"] for row in history]
            results.append({
                "preset": preset, "autocast": "fp32" if precision == "fp32" else "bf16 (where supported)",
                "val_miou_per_epoch": mious, "best_val_miou": max(mious), "best_epoch": mious.index(max(mious)) + 1,
                "last_val_miou": mious[-1], "train_loss_per_epoch": [row["train_loss"] for row in history],
                "val_loss_per_epoch": [row["val_loss"] for row in history],
                "seconds_per_epoch": [row["seconds"] for row in history], "wall_seconds": time.time() - started,
                "load_average_at_start": load, "load_average_at_end": os.getloadavg()})
            print(f"{spec}: best val mIoU {max(mious):.4f} (epoch {results[-1]['best_epoch']}), last {mious[-1]:.4f}",
                  flush=True)
            fileio.write_json(args.output, {"benchmark": "augment_presets", "settings": vars(args),
                                            "model": "unet/resnet18, random init, dice-ce, AdamW, cosine",
                                            "results": results, "environment": environment(args.threads)})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
