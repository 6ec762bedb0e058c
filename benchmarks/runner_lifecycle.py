"""Build, use and close many runners of every CPU variant in one process: no crash, no growing memory.

    python benchmarks/runner_lifecycle.py [--run RUN] [--count 200] [--threads 2] \
        [--output benchmarks/results/runner_lifecycle.json]

What a long-lived process does (a study, a notebook, a server, the test suite): each round builds one runner
of every variant available here through `build_runner` (torch FP32; onnxruntime and openvino on the fp32,
fp16 and int8 graphs; openvino's throughput hint), runs one batch through it inside its `with` block and
closes it. The process's resident memory (VmRSS) is read after the first round and after the last; the
target is the last at most 10% above the first (no growth). Rounds interleave the variants, so machine load hits them
alike. Without --run, a tiny U-Net R18 (64 px, one epoch on synthetic data) is trained and exported into a
temporary folder first (the test suite's run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "int8"),
            ("openvino", "fp32"), ("openvino", "fp16"), ("openvino", "int8"), ("openvino+throughput", "fp32")]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def tiny_run(folder: Path):
    """The test suite's tiny run: U-Net R18, 64 px, one epoch on 16 synthetic images; fp32, fp16, int8 graphs."""
    from segdeploy.core.config import Config, ExportConfig
    from segdeploy.export.onnx import export_graphs
    from segdeploy.training.loop import train

    cfg = Config()
    cfg.data.dataset, cfg.data.size, cfg.data.synthetic_images, cfg.data.max_images = "synthetic", 64, 40, 16
    cfg.train.epochs, cfg.train.batch_size, cfg.train.device, cfg.train.amp = 1, 8, "cpu", False
    run = train(cfg, folder / "tiny")
    export_graphs(run, ExportConfig(precisions=["fp32", "fp16", "int8"], calib_images=4))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--count", type=int, default=200, help="runners built and closed per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "runner_lifecycle.json")
    args = parser.parse_args()

    from segdeploy.core.env import environment
    from segdeploy.core.rundir import RunDir
    from segdeploy.core.threads import torch_threads
    from segdeploy.runtime.variants import RuntimeContext, build_runner, parse_variant, unavailable_reason

    load_at_start = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="runner-lifecycle-") as tmp, torch_threads(args.threads):
        run = RunDir.open(args.run) if args.run else tiny_run(Path(tmp))
        variants, skipped = [], {}
        for spec, precision in VARIANTS:
            variant = parse_variant(spec, precision)
            reason = unavailable_reason(variant, "cpu") or (
                None if run.onnx_path(precision).is_file() or not variant.graph else f"no {precision} graph")
            if reason:
                skipped[variant.label] = reason
            else:
                variants.append(variant)
        images = np.random.default_rng(0).standard_normal((args.batch, 3, 64, 64), dtype=np.float32)
        ctx = RuntimeContext(run, "cpu", args.threads)
        build_seconds: dict[str, list[float]] = {v.label: [] for v in variants}
        reference = {}
        curve = []
        rss_before = rss_mb()
        for round_index in range(1, args.count + 1):
            for variant in variants:
                tic = time.perf_counter()
                with build_runner(variant, ctx) as runner:
                    build_seconds[variant.label].append(time.perf_counter() - tic)
                    logits = runner.infer(images)
                # the same logits from every runner of a variant: each one really ran
                if variant.label not in reference:
                    reference[variant.label] = logits
                elif not np.array_equal(logits, reference[variant.label]):
                    raise SystemExit(f"{variant.label}: round {round_index} computed other logits")
                del logits
            if round_index == 1:
                rss_first = rss_mb()
            if round_index == 1 or round_index % 10 == 0 or round_index == args.count:
                curve.append({"round": round_index, "rss_mb": round(rss_mb(), 1),
                              "seconds": round(time.perf_counter() - started, 1)})
                print(f"round {round_index}/{args.count}: RSS {curve[-1]['rss_mb']:.1f} MB", flush=True)
        rss_last = rss_mb()
    growth = (rss_last - rss_first) / rss_first
    result = {
        "what": "runners built, used once (one batch) and closed, round by round over the variants, in one process",
        "rounds": args.count, "runners_per_variant": args.count, "runners_total": args.count * len(variants),
        "variants": [v.label for v in variants], "skipped": skipped, "batch": args.batch, "input": [3, 64, 64],
        "threads": args.threads,
        "model": str(args.run) if args.run else "U-Net R18, 64 px (the test suite's tiny run)",
        "rss_mb_before_first_round": round(rss_before, 1), "rss_mb_after_first_round": round(rss_first, 1),
        "rss_mb_after_last_round": round(rss_last, 1), "rss_growth_first_to_last": round(growth, 4),
        # a leak grows; RSS falling (the allocator returning the memory of training and export) is no failure
        "target": "RSS after the last close at most 10% above RSS after the first", "within_target": growth <= 0.10,
        "build_seconds_median": {k: round(statistics.median(v), 4) for k, v in build_seconds.items()},
        "rss_curve": curve, "seconds": round(time.perf_counter() - started, 1),
        "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
        "machine_note": "2 CPU cores shared with other work (7 other sessions): build times are not a benchmark",
        "environment": environment(args.threads),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"RSS after round 1: {rss_first:.1f} MB, after round {args.count}: {rss_last:.1f} MB "
          f"({growth:+.1%}); {args.output}")


if __name__ == "__main__":
    main()
