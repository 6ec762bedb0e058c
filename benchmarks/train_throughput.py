"""Training throughput on the CPU (issue 23): images/s of training passes per variant (FP32 as `segdeploy
train --no-amp` runs it, bf16 autocast, channels_last, DataLoader workers, fused/foreach AdamW, torch.compile),
per model and size, interleaved; optionally where a step's time goes (--phases) and the same again in a child
process with oneDNN and ATen capped at AVX2 (--isa-cap avx2).

Each pass is what an epoch of `segdeploy train` does over `--images` training images: the real dataset
(cache-mapped, `--augment` preset), DataLoader, forward, Dice+CE loss (and its .item()), backward and AdamW
step. The variants run A/B/A/B in one process (`--rounds` passes each after a warm-up round that also holds
torch.compile's compilation; one model per variant, all seeded alike), so a shared machine's load hits every
variant alike; the speed-up is the median of the per-round ratios to the first variant run. Not a test.

    python benchmarks/train_throughput.py --sizes 128,256 --phases --isa-cap avx2 \\
        --models unet:resnet18:1.0,unet:tu-mobilenetv4_conv_small:0.25:3e-3 \\
        --output benchmarks/results/train_throughput_23.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from segdeploy.core import fileio  # noqa: E402
from segdeploy.core.config import Config  # noqa: E402
from segdeploy.core.env import environment  # noqa: E402
from segdeploy.core.errors import first_line  # noqa: E402
from segdeploy.data.registry import build_dataset  # noqa: E402
from segdeploy.models.registry import build_model  # noqa: E402
from segdeploy.training.losses import make_loss  # noqa: E402
from segdeploy.training.optimizers import make_optimizer  # noqa: E402
from segdeploy.training.setup import cpu_has_bf16  # noqa: E402
from segdeploy.training.validation import autocast_for, to_device  # noqa: E402
from train_phases import markdown, measure_phases  # noqa: E402


@dataclass(frozen=True)
class Variant:
    description: str
    dtype: torch.dtype | None = None  # autocast dtype; None = FP32
    channels_last: bool = False
    workers: int = 0  # DataLoader num_workers (persistent when > 0)
    optimizer: str = "default"  # key of OPTIMIZERS
    compile: bool = False  # torch.compile(model), inductor
    # pin_memory is not a field: it only speeds host-to-GPU copies, and there is no GPU here


VARIANTS = {
    "fp32": Variant("old path: segdeploy train --no-amp (FP32, workers 0, AdamW for-loop)"),
    "bf16": Variant("bf16 autocast (segdeploy train --amp on a CPU with native bf16)", dtype=torch.bfloat16),
    "fp32+cl": Variant("FP32, model and input channels_last", channels_last=True),
    "bf16+cl": Variant("bf16 autocast, channels_last", dtype=torch.bfloat16, channels_last=True),
    "fp32+workers2": Variant("FP32, DataLoader num_workers=2 persistent (pin_memory: no-op without a GPU)",
                             workers=2),
    "fp32+fused": Variant("FP32, torch.optim.AdamW(fused=True)", optimizer="fused"),
    "fp32+foreach": Variant("FP32, torch.optim.AdamW(foreach=True)", optimizer="foreach"),
    "fp32+compile": Variant("FP32, torch.compile(model) (inductor, default mode)", compile=True),
}
OPTIMIZERS = {
    "default": lambda cfg, params: make_optimizer(cfg.train, params),
    "fused": lambda cfg, params: torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                                   fused=True),
    "foreach": lambda cfg, params: torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                                     foreach=True),
}
# oneDNN (convolutions, matmuls) and ATen's own vectorised kernels (and inductor's codegen, which follows
# ATEN_CPU_CAPABILITY) both capped: ONEDNN_MAX_CPU_ISA alone would leave elementwise ops on AVX-512
AVX2_CAP = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
CAPS = {"none": {}, "avx2": AVX2_CAP}
BF16_CAPPED = "AVX2 cap: the CPU being imitated has no bf16"


def parse_models(text: str) -> list[tuple[str, str, float, float]]:
    """'unet:resnet18:1.0,unet:tu-mobilenetv4_conv_small:0.25:3e-3' -> (name, encoder, decoder width, lr)."""
    specs = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) not in (3, 4):
            raise SystemExit(f"--models: {item!r} is not MODEL:ENCODER:DECODER_WIDTH[:LR]")
        specs.append((parts[0], parts[1], float(parts[2]), float(parts[3]) if len(parts) == 4 else 1e-3))
    return specs


def model_label(spec) -> str:
    return f"{spec[0]}/{spec[1]} w{spec[2]:g}"


def make_config(args, spec, size: int) -> Config:
    cfg = Config()
    cfg.model.name, cfg.model.encoder, cfg.model.decoder_width = spec[0], spec[1], spec[2]
    cfg.data.dataset, cfg.data.root, cfg.data.size = "kvasir", args.data_root, size
    cfg.data.max_images, cfg.data.augment = args.images, args.augment
    cfg.train.loss, cfg.train.lr, cfg.train.batch_size = "dice-ce", spec[3], args.batch_size
    return cfg


def skip_reason(variant: Variant, capped: bool) -> str | None:
    if variant.dtype is torch.bfloat16 and capped:
        return BF16_CAPPED
    if variant.dtype is torch.bfloat16 and not cpu_has_bf16():
        return "no native bf16 on this CPU (AVX512-BF16 or AMX): autocast would emulate it"
    return None


def make_loader(dataset, batch_size: int, workers: int):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       persistent_workers=workers > 0, drop_last=len(dataset) > batch_size)


def build_state(cfg: Config, variant: Variant, dataset, size: int) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg.model, 2, size)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = OPTIMIZERS[variant.optimizer](cfg, model.parameters())
    net = torch.compile(model) if variant.compile else model
    # persistent workers keep their own copy of the dataset: set_epoch below does not reach them
    loader = make_loader(dataset, cfg.train.batch_size, variant.workers) if variant.workers else None
    return {"net": net, "optimizer": optimizer, "loader": loader, "variant": variant}


def one_pass(state: dict, loss_fn, dataset, batch_size: int, epoch: int) -> tuple[float, int]:
    net, optimizer, variant = state["net"], state["optimizer"], state["variant"]
    dataset.set_epoch(epoch, 0)
    loader = state["loader"] or make_loader(dataset, batch_size, 0)
    net.train()
    images_seen, start = 0, time.perf_counter()
    for images, masks in loader:
        images = to_device(images, "cpu", variant.channels_last)
        with autocast_for("cpu", variant.dtype):
            loss = loss_fn(net(images), masks)
        loss.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images_seen += len(images)
    return time.perf_counter() - start, images_seen


def run_rounds(args, states: dict, skipped: dict, loss_fn, dataset, label: str) -> tuple[dict, dict]:
    """Round 0 warms every variant up (and compiles); a variant that fails there becomes a skipped row."""
    rates: dict[str, list[float]] = {name: [] for name in states}
    warmup: dict[str, float] = {}
    for round_index in range(args.rounds + 1):
        for name in list(states):
            try:
                seconds, count = one_pass(states[name], loss_fn, dataset, args.batch_size, round_index)
            except Exception as exc:  # noqa: BLE001 - e.g. torch.compile without a working C++ compiler
                if round_index:
                    raise
                skipped[name] = f"failed: {type(exc).__name__}: {first_line(exc)}"[:400]
                del states[name], rates[name]
                print(f"{label} {name}: {skipped[name]}", flush=True)
                continue
            if round_index:
                rates[name].append(count / seconds)
            else:
                warmup[name] = round(seconds, 2)
            print(f"{label} round {round_index} {name}: {count / seconds:.2f} images/s", flush=True)
    return rates, warmup


def measure(args, spec, size: int, capped: bool) -> dict:
    cfg = make_config(args, spec, size)
    dataset = build_dataset(cfg.data, "train")
    loss_fn = make_loss(cfg.train)
    label = f"{model_label(spec)} {size}px{' capped' if capped else ''}"
    skipped = {name: reason for name in args.variants.split(",")
               if (reason := skip_reason(VARIANTS[name], capped))}
    states = {name: build_state(cfg, VARIANTS[name], dataset, size)
              for name in args.variants.split(",") if name not in skipped}
    rates, warmup = run_rounds(args, states, skipped, loss_fn, dataset, label)
    for state in states.values():  # end persistent workers
        state["loader"] = None
    base = next(iter(rates), None)
    row = {"model": model_label(spec), "size": size, "lr": spec[3], "images_per_pass": len(dataset),
           "base": base, "skipped": skipped, "warmup_pass_s": warmup, "images_per_s": rates,
           "median_images_per_s": {n: statistics.median(r) for n, r in rates.items()},
           "speedup_vs_base": {n: statistics.median(a / b for a, b in zip(rates[n], rates[base]))
                               for n in rates if n != base}, "phases": None}
    if args.phases:  # the warm FP32 model of the rounds where there is one (it is the old path's loop)
        warm = "fp32" in states
        fp32 = states["fp32"] if warm else build_state(cfg, VARIANTS["fp32"], dataset, size)

        def loader_for(epoch: int):
            dataset.set_epoch(epoch, 0)
            return make_loader(dataset, args.batch_size, 0)

        row["phases"] = measure_phases(fp32["net"], fp32["optimizer"], loss_fn, loader_for, args.phase_rounds,
                                       args.profile_steps, warm)
        print(f"{label} phases: {row['phases']['phase_percent']}", flush=True)
    return row


def measure_all(args, capped: bool) -> dict:
    torch.set_num_threads(args.threads)
    results = [measure(args, spec, int(size), capped)
               for spec in parse_models(args.models) for size in args.sizes.split(",")]
    return {"settings": vars(args), "capped": capped, "cap_env": {k: os.environ.get(k) for k in AVX2_CAP},
            "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_has_native_bf16": cpu_has_bf16(),
            "variants": {name: asdict(VARIANTS[name]) | {"dtype": str(VARIANTS[name].dtype)}
                         for name in args.variants.split(",")},
            "environment": environment(args.threads, probe_openvino=False), "results": results}


def capped_child(args) -> dict:
    """The same measurement in a child process under the cap's environment (it must be set before torch loads)."""
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as folder:
        out = Path(folder) / "capped.json"
        command = [sys.executable, __file__, *sys.argv[1:], "--child-out", str(out)]
        subprocess.run(command, check=True, env={**os.environ, **CAPS[args.isa_cap]})
        return fileio.read_json(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/kvasir-seg")
    parser.add_argument("--models", default="unet:resnet18:1.0",
                        help="comma-separated MODEL:ENCODER:DECODER_WIDTH[:LR] (LR default 1e-3)")
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--images", type=int, default=64, help="training images per pass")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--augment", default="standard")
    parser.add_argument("--variants", default="fp32,bf16,fp32+cl,fp32+workers2,fp32+fused,fp32+compile",
                        help=f"comma-separated, first is the base; known: {', '.join(VARIANTS)}")
    parser.add_argument("--phases", action="store_true", help="also the FP32 phase breakdown and a profile")
    parser.add_argument("--phase-rounds", type=int, default=1, help="timed passes of the phase breakdown")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--isa-cap", choices=sorted(CAPS), default="none",
                        help="avx2: also run everything in a child with oneDNN and ATen capped at AVX2")
    parser.add_argument("--output", default="benchmarks/results/train_throughput_23.json")
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [n for n in args.variants.split(",") if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    parse_models(args.models)
    return args


def main() -> None:
    args = parse_args()
    if args.child_out:  # the capped child: its part only
        fileio.write_json(args.child_out, measure_all(args, capped=True))
        return
    load_before = os.getloadavg()
    result = {"benchmark": "train_throughput", "issue": 23, "dataset": "kvasir train subset, random init",
              "cap_env": CAPS[args.isa_cap], "native": measure_all(args, capped=False),
              "avx2_cap": capped_child(args) if args.isa_cap != "none" else None,
              "notes": ["pin_memory only speeds host-to-GPU copies: it is not measured on a CPU-only machine",
                        "capped rows run after the native ones (another process), not interleaved with them",
                        "fp32+workers2 runs 2 loader processes beside --threads compute threads; its persistent "
                        "workers keep epoch 0's augmentation draw (same work per pass, other random draws)"],
              "load_average_before": load_before, "load_average_after": os.getloadavg()}
    fileio.write_json(args.output, result)
    fileio.write_text(Path(args.output).with_suffix(".md"), markdown(result))
    print(markdown(result))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
