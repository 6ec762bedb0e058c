"""Summarise a GPU sweep against issue 5's goal: best torch path >= 3x eager FP32 throughput at batch 32
for DeepLabV3+ ResNet-50 at 256x256, and its achieved TFLOP/s as a fraction of the measured bf16 peak.

    python benchmarks/gpu_summary.py benchmarks/results/<gpu-name>

Reads <dir>/deeplabv3plus-resnet50/bench.json and <dir>/matmul_peak.json; writes <dir>/summary.json.
NOT RUN in this project so far: no GPU was available to it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summarise(folder: Path, model: str = "deeplabv3plus-resnet50", batch: int = 32) -> dict:
    bench = json.loads((folder / model / "bench.json").read_text())
    peak = json.loads((folder / "matmul_peak.json").read_text())["tflops"]
    rows = [r for r in bench["results"] if r["batch_size"] == batch and r["status"] == "ok"
            and r["backend"] == "torch"]
    eager = next(r for r in rows if r["variant"] == "torch")
    best = max(rows, key=lambda r: r["throughput_ips"])
    return {"model": model, "batch_size": batch, "eager_fp32_ips": eager["throughput_ips"],
            "best_variant": best["variant"], "best_ips": best["throughput_ips"],
            "speedup": best["throughput_ips"] / eager["throughput_ips"], "goal_speedup": 3.0,
            "best_tflops": best["tflops"], "bf16_matmul_peak_tflops": peak,
            "fraction_of_peak": best["tflops"] / peak, "goal_fraction_of_peak": 0.40}


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    summary = summarise(folder)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
