"""Measured dense-matmul peak of this GPU (default bf16), the denominator of the TFLOP/s ratio.

    python benchmarks/matmul_peak.py [--dtype bf16|fp16|fp32] [--n 8192] [--reps 50] [--output FILE]

Needs a CUDA GPU. Times `reps` back-to-back n x n x n matmuls with CUDA events after a warm-up and
reports the best of 5 repeats: 2 * n^3 * reps FLOPs over the elapsed time.
NOT RUN in this project so far: no GPU was available to it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def matmul_peak_tflops(dtype: str = "bf16", n: int = 8192, reps: int = 50, repeats: int = 5) -> dict:
    import torch

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    a = torch.randn(n, n, device="cuda", dtype=torch_dtype)
    b = torch.randn(n, n, device="cuda", dtype=torch_dtype)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    best_ms = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            a @ b
        end.record()
        end.synchronize()
        best_ms = min(best_ms, start.elapsed_time(end))
    tflops = 2 * n**3 * reps / (best_ms / 1e3) / 1e12
    return {"dtype": dtype, "n": n, "reps": reps, "best_ms": best_ms, "tflops": tflops,
            "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    result = matmul_peak_tflops(args.dtype, args.n, args.reps)
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
