"""FP32 vs FP16 vs INT8 graphs on ONNX Runtime CPU: batch-1 latency and validation mIoU.

Target (issue 4): DeepLabV3+ ResNet-50 at 256x256 trained a few epochs on Kvasir-SEG; INT8 at least
2x faster than FP32 with an mIoU drop of at most 1 point. Not a test: it measures and writes
benchmarks/results/precision_cpu.json, whatever the numbers are.

    python -m segdeploy train --dataset kvasir --data-root /work/shared/datasets/kvasir-seg \\
        --model deeplabv3plus --encoder resnet50 --size 256 --max-images 200 --epochs 3 \\
        --batch-size 8 --lr 1e-3 --output runs/kvasir-dlv3p-r50
    python benchmarks/precision_cpu.py runs/kvasir-dlv3p-r50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdeploy import fileio  # noqa: E402
from segdeploy.bench import bench_cell  # noqa: E402
from segdeploy.env import environment  # noqa: E402
from segdeploy.export import export_graphs  # noqa: E402
from segdeploy.parity import run_parity  # noqa: E402
from segdeploy.runners import load_runner  # noqa: E402
from segdeploy.rundir import RunDir  # noqa: E402

PRECISIONS = ["fp32", "fp16", "int8"]


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

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    run = RunDir.open(args.run)
    cfg = run.load_config()
    export_seconds = None
    if not args.skip_export:
        start = time.perf_counter()
        export_graphs(run, precisions=PRECISIONS, calib_images=args.calib_images, calib_method=args.calib_method)
        export_seconds = time.perf_counter() - start

    rng = np.random.default_rng(0)
    images = rng.standard_normal((1, 3, cfg.data.size, cfg.data.size), dtype=np.float32)
    latency = {}
    for precision in PRECISIONS:  # interleaved twice, so a burst of load on the shared CPU hits all alike
        latency[precision] = []
    for _ in range(2):
        for precision in PRECISIONS:
            runner = load_runner("onnxruntime", run, precision, threads=args.threads)
            cell = bench_cell(runner, images, args.warmup, args.iters)
            latency[precision].append(cell["latency_ms"])
            print(f"{precision}: p50 {cell['latency_ms']['p50']:.1f} ms", flush=True)
    best = {p: min(cells, key=lambda c: c["p50"]) for p, cells in latency.items()}

    parity = run_parity(run, ["onnxruntime"], PRECISIONS, max_images=args.val_images, batch_size=8,
                        threads=args.threads)
    rows = {r["precision"]: r for r in parity["results"]}
    results = []
    for precision in PRECISIONS:
        row = rows[precision]
        results.append({
            "precision": precision, "latency_ms": best[precision], "latency_runs": latency[precision],
            "speedup_vs_fp32": best["fp32"]["p50"] / best[precision]["p50"],
            "miou": row["miou"], "miou_torch_fp32": row["miou_reference"],
            "miou_delta_pt_vs_torch": 100 * row["miou_delta"],
            "argmax_agreement": row["argmax_agreement"], "max_abs_err": row["max_abs_err"],
            "onnx_bytes": run.onnx_path(precision).stat().st_size,
        })
    fp32 = next(r for r in results if r["precision"] == "fp32")
    int8 = next(r for r in results if r["precision"] == "int8")
    report = {
        "benchmark": "precision_cpu", "backend": "onnxruntime CPUExecutionProvider", "batch_size": 1,
        "input_size": cfg.data.size, "model": {"name": cfg.model.name, "encoder": cfg.model.encoder},
        "train": {"dataset": cfg.data.dataset, "max_images": cfg.data.max_images, "epochs": cfg.train.epochs,
                  "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
                  "encoder_weights": cfg.model.encoder_weights},
        "calibration": {"images": args.calib_images, "method": args.calib_method},
        "val_images": parity["images"], "warmup": args.warmup, "iters": args.iters,
        "export_seconds": export_seconds, "environment": environment(args.threads), "results": results,
        "targets": {"int8_speedup_min": 2.0, "int8_miou_drop_max_pt": 1.0,
                    "int8_speedup": best["fp32"]["p50"] / best["int8"]["p50"],
                    "int8_miou_drop_pt": 100 * (fp32["miou"] - int8["miou"]),
                    "met": bool(best["fp32"]["p50"] / best["int8"]["p50"] >= 2.0
                                and 100 * (fp32["miou"] - int8["miou"]) <= 1.0)},
    }
    fileio.write_json(args.output, report)
    print(f"{'precision':>9} {'p50 ms':>8} {'speedup':>8} {'mIoU %':>8} {'delta pt':>9} {'agree %':>8}")
    for r in results:
        print(f"{r['precision']:>9} {r['latency_ms']['p50']:8.1f} {r['speedup_vs_fp32']:8.2f} "
              f"{100 * r['miou']:8.2f} {r['miou_delta_pt_vs_torch']:+9.3f} {100 * r['argmax_agreement']:8.3f}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
