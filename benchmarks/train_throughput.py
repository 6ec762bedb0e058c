"""Training throughput on the CPU: images/s of training passes, FP32 vs bf16 autocast (and channels_last),
U-Net ResNet-18 from random init on Kvasir-SEG, interleaved.

Each pass is what an epoch of `segdeploy train` does over `--images` training images: the real dataset
(cache-mapped, `--augment` preset), DataLoader, forward, Dice+CE loss, backward and AdamW step. The variants
run A/B/A/B in one process (`--rounds` passes each, one model per variant, all seeded alike), so a shared
machine's load hits every variant alike; the speed-up is the median of the per-round ratios. Not a test:
the numbers go to benchmarks/results/train_throughput.json.

    python benchmarks/train_throughput.py --data-root ../shared/datasets/kvasir-seg --sizes 128,256
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from segdeploy.core import fileio  # noqa: E402
from segdeploy.core.config import Config  # noqa: E402
from segdeploy.core.env import environment  # noqa: E402
from segdeploy.data.registry import build_dataset  # noqa: E402
from segdeploy.models.registry import build_model  # noqa: E402
from segdeploy.training.losses import make_loss  # noqa: E402
from segdeploy.training.validation import autocast_for, to_device  # noqa: E402
from segdeploy.training.optimizers import make_optimizer  # noqa: E402
from segdeploy.training.setup import cpu_has_bf16  # noqa: E402

VARIANTS = {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp32+cl": (None, True),
            "bf16+cl": (torch.bfloat16, True)}


def make_config(args, size: int) -> Config:
    cfg = Config()
    cfg.data.dataset, cfg.data.root, cfg.data.size = "kvasir", args.data_root, size
    cfg.data.max_images, cfg.data.augment = args.images, args.augment
    cfg.train.loss, cfg.train.lr, cfg.train.batch_size = "dice-ce", 1e-3, args.batch_size
    return cfg


def one_pass(model, optimizer, loss_fn, loader, dtype, channels_last: bool) -> tuple[float, int]:
    model.train()
    images_seen, start = 0, time.perf_counter()
    for images, masks in loader:
        images = to_device(images, "cpu", channels_last)
        with autocast_for("cpu", dtype):
            loss = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images_seen += len(images)
    return time.perf_counter() - start, images_seen


def measure_size(args, size: int, variants: list[str]) -> dict:
    cfg = make_config(args, size)
    dataset = build_dataset(cfg.data, "train")
    states = {}
    for name in variants:
        torch.manual_seed(0)
        model = build_model(cfg.model, 2, size)
        if VARIANTS[name][1]:
            model = model.to(memory_format=torch.channels_last)
        states[name] = (model, make_optimizer(cfg.train, model.parameters()))
    loss_fn = make_loss(cfg.train)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(args.rounds + 1):  # round 0 warms every variant up and is not counted
        for name in variants:
            dataset.set_epoch(round_index, 0)
            loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False)
            seconds, count = one_pass(*states[name], loss_fn, loader, *VARIANTS[name])
            if round_index:
                rates[name].append(count / seconds)
            print(f"{size}px round {round_index} {name}: {count / seconds:.2f} images/s", flush=True)
    base = variants[0]
    return {"size": size, "images_per_pass": len(dataset), "images_per_s": rates,
            "median_images_per_s": {n: statistics.median(r) for n, r in rates.items()},
            f"speedup_vs_{base}": {n: statistics.median(a / b for a, b in zip(rates[n], rates[base]))
                                   for n in variants if n != base}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/kvasir-seg")
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--images", type=int, default=64, help="training images per pass")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--augment", default="standard")
    parser.add_argument("--variants", default="fp32,bf16,fp32+cl,bf16+cl")
    parser.add_argument("--output", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    load_before = os.getloadavg()
    results = [measure_size(args, int(size), variants) for size in args.sizes.split(",")]
    fileio.write_json(args.output, {
        "benchmark": "train_throughput", "model": "unet/resnet18 (random init)", "dataset": "kvasir train subset",
        "settings": vars(args), "cpu_has_native_bf16": cpu_has_bf16(), "results": results,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "environment": environment(args.threads)})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
