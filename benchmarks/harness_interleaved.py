"""Harness overhead measured pair by pair in one process, so machine load hits both sides alike.

    python benchmarks/harness_interleaved.py [--run RUN] [--backends torch,torch+cl,onnxruntime] \
        [--threads 2] [--pairs 10] [--warmup 3] [--output benchmarks/results/harness_interleaved.json]

For each backend: the runner `segdeploy bench` builds for the cell (segdeploy.runtime.variants.build_runner),
timed by the harness's timer (segdeploy.bench.timing.HostTimer.measure around runner.run + synchronize), and
a bare loop body (`model(x)` under inference_mode / `session.run`) on its own copy of the same weights /
file, timed with time.perf_counter, alternating A B A B ... (order flipped every pair). Reports the
median of the paired ratios harness/bare - 1 and the ratio of the medians. This isolates the harness's
timing path; `harness_overhead.py` compares whole processes (CLI + subprocess cell) instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def bare_step(backend: str, run: Path, x: np.ndarray, threads: int):
    if backend == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(run / "export" / "model.onnx"), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda: session.run(None, {name: x})
    import torch

    from segdeploy.core.rundir import RunDir

    from segdeploy.models.checkpoint import load_model

    model, _, _ = load_model(RunDir(run))
    xt = torch.from_numpy(x)
    if backend == "torch+cl":
        model = model.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.inference_mode():
            model(xt)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-deeplabv3plus-r50")
    parser.add_argument("--backends", default="torch,torch+cl,onnxruntime")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "harness_interleaved.json")
    args = parser.parse_args()

    import torch

    from segdeploy.bench.cell import cell_input
    from segdeploy.runtime.variants import RuntimeContext, build_runner, parse_variant
    from segdeploy.core.rundir import RunDir
    from segdeploy.bench.timing import HostTimer

    torch.set_num_threads(args.threads)
    run = RunDir(args.run)
    size = run.load_config().data.size
    x = cell_input(1, size, seed=0)
    summary, pairs_out = {}, {}
    started = time.time()
    for backend in args.backends.split(","):
        runner = build_runner(parse_variant(backend), RuntimeContext(run, "cpu", args.threads))
        prepared = runner.prepare(x)
        timer = HostTimer()
        harness = lambda: timer.measure(lambda: runner.run(prepared), runner.synchronize)  # noqa: E731
        step = bare_step(backend, run.path, x, args.threads)

        def bare():
            start = time.perf_counter()
            step()
            return (time.perf_counter() - start) * 1e3
        for _ in range(args.warmup):
            harness()
            bare()
        h, b = [], []
        for i in range(args.pairs):
            if i % 2 == 0:
                h.append(harness())
                b.append(bare())
            else:
                b.append(bare())
                h.append(harness())
            print(f"{backend:12s} pair {i}: harness {h[-1]:9.2f} ms  bare {b[-1]:9.2f} ms  load {os.getloadavg()[0]:.1f}",
                  flush=True)
        ratios = [hi / bi - 1 for hi, bi in zip(h, b)]
        summary[backend] = {"harness_ms_median": statistics.median(h), "bare_ms_median": statistics.median(b),
                            "overhead_of_medians": statistics.median(h) / statistics.median(b) - 1,
                            "paired_overhead_median": statistics.median(ratios),
                            "within_5_percent": abs(statistics.median(ratios)) <= 0.05}
        pairs_out[backend] = {"harness_ms": h, "bare_ms": b}
        runner.close()
        del runner, prepared, step
    report = {"what": "harness timing path vs bare loop body, interleaved pairs in one process, batch 1",
              "command": " ".join(["python", "benchmarks/harness_interleaved.py"] + sys.argv[1:]),
              "run": str(args.run), "threads": args.threads, "pair_count": args.pairs, "warmup": args.warmup,
              "load_average_1min_at_end": os.getloadavg()[0], "seconds": time.time() - started,
              "summary": summary, "pairs": pairs_out}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    for backend, s in summary.items():
        print(f"{backend:12s} harness {s['harness_ms_median']:9.2f} ms  bare {s['bare_ms_median']:9.2f} ms  "
              f"paired overhead {100 * s['paired_overhead_median']:+.1f}%  "
              f"(of medians {100 * s['overhead_of_medians']:+.1f}%)  within 5%: {s['within_5_percent']}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
