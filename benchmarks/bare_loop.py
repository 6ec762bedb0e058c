"""The reference a benchmark harness is judged against: the plainest timing loop for one backend.

    python benchmarks/bare_loop.py RUN --backend onnxruntime --threads 2 --batch 1 --iters 30 --warmup 10

Prints one JSON object with the per-iteration latencies (ms). Deliberately independent of
segdeploy.timing / segdeploy.bench: it only loads the same weights (torch) or file (onnxruntime)
and times `model(x)` / `session.run` with time.perf_counter (CPU work is synchronous).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--backend", required=True, choices=["torch", "torch+cl", "onnxruntime"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    import tomllib
    from pathlib import Path

    size = tomllib.loads(Path(args.run, "config.toml").read_text())["data"]["size"]
    x = np.random.default_rng(0).standard_normal((args.batch, 3, size, size), dtype=np.float32)

    if args.backend == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(Path(args.run, "export", "model.onnx")), options,
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def step():
            session.run(None, {name: x})
    else:
        import torch

        from segdeploy.core.rundir import RunDir

        from segdeploy.models.checkpoint import load_model

        torch.set_num_threads(args.threads)
        model, _, _ = load_model(RunDir(Path(args.run)))
        xt = torch.from_numpy(x)
        if args.backend == "torch+cl":
            model = model.to(memory_format=torch.channels_last)
            xt = xt.contiguous(memory_format=torch.channels_last)

        def step():
            with torch.inference_mode():
                model(xt)

    for _ in range(args.warmup):
        step()
    latencies = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step()
        latencies.append((time.perf_counter() - start) * 1e3)
    print(json.dumps({"backend": args.backend, "threads": args.threads, "batch": args.batch,
                      "latencies_ms": latencies, "p50": float(np.median(latencies)),
                      "mean": float(np.mean(latencies))}))


if __name__ == "__main__":
    main()
