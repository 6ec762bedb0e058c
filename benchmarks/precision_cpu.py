"""FP32 vs FP16 vs INT8 graphs on ONNX Runtime CPU: batch-1 latency and validation mIoU.

Target (issue 4): DeepLabV3+ ResNet-50 at 256x256 trained a few epochs on Kvasir-SEG; INT8 at least
2x faster than FP32 with an mIoU drop of at most 1 point. Not a test: it measures and writes
benchmarks/results/precision_cpu.json, whatever the numbers are.

    python -m segdeploy train --dataset kvasir --data-root ../shared/datasets/kvasir-seg \\
        --model deeplabv3plus --encoder resnet50 --size 256 --max-images 200 --epochs 3 \\
        --batch-size 8 --lr 1e-3 --output runs/kvasir-dlv3p-r50
    python benchmarks/precision_cpu.py runs/kvasir-dlv3p-r50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdeploy.core import fileio  # noqa: E402
from segdeploy.core.config import ExportConfig  # noqa: E402
from segdeploy.bench.sweep import bench_cell  # noqa: E402
from segdeploy.data.registry import build_dataset  # noqa: E402
from segdeploy.core.env import environment  # noqa: E402
from segdeploy.export.onnx import export_graphs  # noqa: E402
from segdeploy.data.metrics import confusion_matrix, summarize  # noqa: E402
from segdeploy.evaluation.parity import compare_logits  # noqa: E402
from segdeploy.export.precision import calibration_images, quantize_int8  # noqa: E402
from segdeploy.runtime.base import OnnxRuntimeRunner
from segdeploy.runtime.variants import load_runner  # noqa: E402
from segdeploy.core.rundir import RunDir  # noqa: E402

# name -> (graph file, description). "int8" is the TensorRT-style graph (symmetric INT8 activations);
# "int8-uint8" the same weights with asymmetric UINT8 activations, ONNX Runtime's fast x86 path.
VARIANTS = {
    "fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx", "int8-uint8": "model.int8-uint8.onnx",
}


def evaluate(runner, dataset, reference_logits=None, batch_size: int = 8):
    cm = np.zeros((dataset.num_classes, dataset.num_classes), np.int64)
    logits_all, agree, pixels = [], 0, 0
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        logits = runner.infer(dataset.normalized_batch(indices))
        cm += confusion_matrix(dataset.masks[start:indices.stop], logits.argmax(1), dataset.num_classes)
        if reference_logits is None:
            logits_all.append(logits)
        else:
            stats = compare_logits(reference_logits[start:indices.stop], logits)
            agree, pixels = agree + stats["agree"], pixels + stats["pixels"]
    miou = summarize(cm)["miou"]
    if reference_logits is None:
        return miou, np.concatenate(logits_all)
    return miou, agree / max(pixels, 1)


def _best_val_miou(run: RunDir) -> float | None:
    import csv

    with open(run.history) as f:
        values = [float(row["val_miou"]) for row in csv.DictReader(f)]
    return max(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="trained run directory")
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--calib-method", default="minmax")
    parser.add_argument("--val-images", type=int, default=None, help="cap on validation images (default: all)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-export", action="store_true", help="reuse RUN/export/*.onnx")
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "precision_cpu.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    run = RunDir.open(args.run)
    cfg = run.load_config()
    export_seconds = None
    if not args.skip_export:
        start = time.perf_counter()
        export_graphs(run, ExportConfig(precisions=["fp32", "fp16", "int8"], calib_images=args.calib_images,
                                        calib_method=args.calib_method))
        images, _ = calibration_images(cfg, args.calib_images)
        quantize_int8(run.onnx_path("fp32"), run.export_dir / VARIANTS["int8-uint8"], images,
                      method=args.calib_method, activations="uint8")
        export_seconds = time.perf_counter() - start

    def runner_for(name):
        return OnnxRuntimeRunner(run.export_dir / VARIANTS[name], precision=name.split("-")[0], threads=args.threads)

    x = np.random.default_rng(0).standard_normal((1, 3, cfg.data.size, cfg.data.size), dtype=np.float32)
    latency = {name: [] for name in VARIANTS}
    for _ in range(2):  # interleaved twice: a burst of load on the shared CPU hits every variant alike
        for name in VARIANTS:
            cell = bench_cell(runner_for(name), x, args.warmup, args.iters)
            latency[name].append(cell["latency_ms"])
            print(f"{name}: p50 {cell['latency_ms']['p50']:.1f} ms", flush=True)
    best = {name: min(cells, key=lambda c: c["p50"]) for name, cells in latency.items()}

    from segdeploy.core.config import copy_config

    data_cfg = copy_config(cfg).data  # cfg.data.max_images is the training cap, reported below
    data_cfg.max_images = args.val_images
    dataset = build_dataset(data_cfg, "val")
    miou_torch, torch_logits = evaluate(load_runner("torch", run, "fp32"), dataset)
    print(f"torch fp32 mIoU {100 * miou_torch:.2f} on {len(dataset)} val images", flush=True)
    results = []
    for name in VARIANTS:
        miou, agreement = evaluate(runner_for(name), dataset, torch_logits)
        print(f"{name}: mIoU {100 * miou:.2f}, argmax agreement {100 * agreement:.3f}%", flush=True)
        results.append({
            "variant": name, "file": VARIANTS[name], "latency_ms": best[name], "latency_runs": latency[name],
            "speedup_vs_fp32": best["fp32"]["p50"] / best[name]["p50"], "miou": miou,
            "miou_delta_pt_vs_torch_fp32": 100 * (miou - miou_torch), "argmax_agreement_vs_torch": agreement,
            "onnx_bytes": (run.export_dir / VARIANTS[name]).stat().st_size,
        })
    rows = {r["variant"]: r for r in results}
    report = {
        "benchmark": "precision_cpu", "command": "python " + " ".join(sys.argv), "backend": "onnxruntime CPUExecutionProvider", "batch_size": 1,
        "input_size": cfg.data.size, "model": {"name": cfg.model.name, "encoder": cfg.model.encoder},
        "train": {"dataset": cfg.data.dataset, "max_images": cfg.data.max_images, "epochs_configured": cfg.train.epochs,
                  "epochs_completed": max(len(run.history.read_text().splitlines()) - 1, 0),
                  "best_val_miou_during_training": _best_val_miou(run),
                  "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
                  "encoder_weights": cfg.model.encoder_weights},
        "calibration": {"images": args.calib_images, "method": args.calib_method},
        "val_images": len(dataset), "miou_torch_fp32": miou_torch, "warmup": args.warmup, "iters": args.iters,
        "export_seconds": export_seconds, "environment": environment(args.threads), "results": results,
        "targets": {name: {"speedup": rows[name]["speedup_vs_fp32"],
                           "miou_drop_pt": 100 * (rows["fp32"]["miou"] - rows[name]["miou"]),
                           "met": bool(rows[name]["speedup_vs_fp32"] >= 2.0
                                       and 100 * (rows["fp32"]["miou"] - rows[name]["miou"]) <= 1.0)}
                    for name in ("int8", "int8-uint8")},
    }
    fileio.write_json(args.output, report)
    print(f"{'variant':>10} {'p50 ms':>8} {'speedup':>8} {'mIoU %':>8} {'delta pt':>9} {'agree %':>8}")
    for r in results:
        print(f"{r['variant']:>10} {r['latency_ms']['p50']:8.1f} {r['speedup_vs_fp32']:8.2f} "
              f"{100 * r['miou']:8.2f} {r['miou_delta_pt_vs_torch_fp32']:+9.3f} {100 * r['argmax_agreement_vs_torch']:8.3f}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
