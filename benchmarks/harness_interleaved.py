"""Harness overhead measured pair by pair in one process, so machine load hits both sides alike.

    python benchmarks/harness_interleaved.py [--run RUN] [--backends torch,torch+cl,onnxruntime,openvino] \
        [--threads 2] [--pairs 10] [--block 5] [--warmup 3] [--output benchmarks/results/harness_interleaved.json]

For each backend: the runner `segdeploy bench` builds for the cell (segdeploy.runtime.variants.build_runner),
timed by the harness's timed loop (segdeploy.bench.timing.time_until_sure: HostTimer.measure around
runner.run + synchronize, with the median's confidence interval checked between iterations; here after
every iteration, the most often it ever checks, for a block of `--block` iterations), and a bare loop body
(`model(x)` under inference_mode / `session.run` / `request.infer`) on its own copy of the same weights /
file, `--block` iterations timed with time.perf_counter, alternating blocks A B A B ... (order flipped every
pair). Per block: the median latency and the block's wall time (the harness's includes its interval checks).
Reports the median of the paired ratios harness/bare - 1 and the ratio of the medians, for both. This
isolates the harness's timing path; `harness_overhead.py` compares whole processes (CLI + subprocess cell).
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
    if backend == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(run / "export" / "model.onnx"), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads)})
        request = compiled.create_infer_request()
        return lambda: request.infer({0: x})
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
    parser.add_argument("--backends", default="torch,torch+cl,onnxruntime,openvino")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--block", type=int, default=5, help="iterations per side and pair")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "harness_interleaved.json")
    args = parser.parse_args()

    import torch

    from segdeploy.bench.cell import cell_input
    from segdeploy.runtime.variants import RuntimeContext, build_runner, parse_variant
    from segdeploy.core.rundir import RunDir
    from segdeploy.bench.timing import HostTimer, StopPolicy, time_until_sure

    torch.set_num_threads(args.threads)
    run = RunDir(args.run)
    size = run.load_config().data.size
    x = cell_input(1, size, seed=0)
    summary, pairs_out = {}, {}
    started = time.time()
    load_at_start = os.getloadavg()
    for backend in args.backends.split(","):
        runner = build_runner(parse_variant(backend), RuntimeContext(run, "cpu", args.threads))
        prepared = runner.prepare(x)
        timer = HostTimer()
        # never converges (rel_ci 1e-12), so exactly `block` iterations, the interval checked after each one
        policy = StopPolicy(rel_ci=1e-12, max_time_s=float("inf"), min_iters=1, max_iters=args.block)

        def harness():
            start = time.perf_counter()
            timed = time_until_sure(lambda: runner.run(prepared), runner.synchronize, timer, policy)
            return float(statistics.median(timed.latencies_ms)), (time.perf_counter() - start) * 1e3

        step = bare_step(backend, run.path, x, args.threads)

        def bare():
            start = time.perf_counter()
            latencies = []
            for _ in range(args.block):
                begin = time.perf_counter()
                step()
                latencies.append((time.perf_counter() - begin) * 1e3)
            return statistics.median(latencies), (time.perf_counter() - start) * 1e3
        for _ in range(args.warmup):
            harness()
            bare()
        h, b, hw, bw = [], [], [], []
        for i in range(args.pairs):
            first, second = (harness, bare) if i % 2 == 0 else (bare, harness)
            results = {first: first(), second: second()}
            h.append(results[harness][0])
            hw.append(results[harness][1])
            b.append(results[bare][0])
            bw.append(results[bare][1])
            print(f"{backend:12s} pair {i}: harness {h[-1]:9.2f} ms  bare {b[-1]:9.2f} ms  load {os.getloadavg()[0]:.1f}",
                  flush=True)
        ratios = [hi / bi - 1 for hi, bi in zip(h, b)]
        wall_ratios = [hi / bi - 1 for hi, bi in zip(hw, bw)]
        summary[backend] = {"harness_ms_median": statistics.median(h), "bare_ms_median": statistics.median(b),
                            "overhead_of_medians": statistics.median(h) / statistics.median(b) - 1,
                            "paired_overhead_median": statistics.median(ratios),
                            "block_wall_paired_overhead_median": statistics.median(wall_ratios),
                            "within_5_percent": abs(statistics.median(ratios)) <= 0.05}
        pairs_out[backend] = {"harness_ms": h, "bare_ms": b, "harness_block_wall_ms": hw, "bare_block_wall_ms": bw}
        runner.close()
        del runner, prepared, step
    report = {"what": "harness timed loop (time_until_sure, interval checked after every iteration) vs bare loop "
                      "body, interleaved blocks in one process, batch 1; per block the median latency and wall time",
              "command": " ".join(["python", "benchmarks/harness_interleaved.py"] + sys.argv[1:]),
              "run": str(args.run), "threads": args.threads, "pair_count": args.pairs, "block": args.block,
              "warmup": args.warmup, "load_average_at_start": load_at_start,
              "load_average_at_end": os.getloadavg(), "seconds": time.time() - started,
              "summary": summary, "pairs": pairs_out}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    for backend, s in summary.items():
        print(f"{backend:12s} harness {s['harness_ms_median']:9.2f} ms  bare {s['bare_ms_median']:9.2f} ms  "
              f"paired overhead {100 * s['paired_overhead_median']:+.1f}%  "
              f"(of medians {100 * s['overhead_of_medians']:+.1f}%, block wall {100 * s['block_wall_paired_overhead_median']:+.1f}%)"
              f"  within 5%: {s['within_5_percent']}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
