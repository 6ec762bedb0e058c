"""Is `segdeploy bench` measuring the model, or itself? Harness vs a bare loop, per CPU backend.

    python benchmarks/harness_overhead.py [--run RUN] [--backends torch,torch+cl,onnxruntime] \
        [--threads 2] [--iters 30] [--warmup 10] [--rounds 3] [--output benchmarks/results/harness_overhead.json]

For every backend, each round runs `segdeploy bench RUN --backends B --batch-sizes 1` (the real CLI,
its cell in a fresh subprocess) and `benchmarks/bare_loop.py` (a plain perf_counter loop around
`model(x)` / `InferenceSession.run` on the same weights / file, same thread count, same seeded input),
both as fresh processes, alternating which goes first, so load from other users of the machine hits
both alike. The harness gets the same warm-up count as the bare loop (--max-warmup = --warmup).
Goals: issue 2, ONNX Runtime CPU p50 within 5% of the bare loop for DeepLabV3+ ResNet-50 at 256x256,
batch 1; issue 5, the same for every CPU backend.

Without --run, a random-init DeepLabV3+ ResNet-50 run at 256x256 is created (one training step on
8 synthetic images, then export) in runs/bench-deeplabv3plus-r50.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def sh(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(args, cwd=ROOT, env=env, check=True, text=True, capture_output=True, **kw)


def ensure_run(run: Path, threads: int) -> Path:
    if not (run / "export" / "model.onnx").is_file():
        sh([PY, "-m", "segdeploy", "train", "--model", "deeplabv3plus", "--encoder", "resnet50", "--size", "256",
            "--epochs", "1", "--max-steps", "1", "--max-images", "8", "--batch-size", "4", "--device", "cpu",
            "--threads", str(threads), "--output", str(run), "--overwrite"])
        sh([PY, "-m", "segdeploy", "export", str(run)])
    return run


def harness(run: Path, backend: str, args) -> dict:
    sh([PY, "-m", "segdeploy", "bench", str(run), "--backends", backend, "--batch-sizes", "1",
        "--iters", str(args.iters), "--warmup", str(args.warmup), "--max-warmup", str(args.warmup),
        "--threads", str(args.threads), "--device", "cpu"])
    row = json.loads((run / "bench.json").read_text())["results"][0]
    if row["status"] != "ok":
        raise RuntimeError(f"harness cell for {backend} did not run: {row['status']}")
    return {"p50": row["latency_ms"]["p50"], "mean": row["latency_ms"]["mean"],
            "p90": row["latency_ms"]["p90"], "warmup_iterations": row["warmup_iterations"]}


def bare(run: Path, backend: str, args) -> dict:
    out = sh([PY, str(ROOT / "benchmarks" / "bare_loop.py"), str(run), "--backend", backend,
              "--threads", str(args.threads), "--iters", str(args.iters), "--warmup", str(args.warmup)])
    data = json.loads(out.stdout.strip().splitlines()[-1])
    lat = sorted(data["latencies_ms"])
    return {"p50": data["p50"], "mean": data["mean"], "p90": lat[int(0.9 * (len(lat) - 1))],
            "warmup_iterations": args.warmup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-deeplabv3plus-r50")
    parser.add_argument("--backends", default="torch,torch+cl,onnxruntime")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "harness_overhead.json")
    args = parser.parse_args()

    run = ensure_run(args.run, args.threads)
    backends = args.backends.split(",")
    measurements = []
    started = time.time()
    for round_index in range(args.rounds):
        for i, backend in enumerate(backends):
            order = ["harness", "bare"] if (round_index + i) % 2 == 0 else ["bare", "harness"]
            for kind in order:
                t0 = time.time()
                result = (harness if kind == "harness" else bare)(run, backend, args)
                load = os.getloadavg()[0]
                measurements.append({"round": round_index, "backend": backend, "kind": kind, **result,
                                     "wall_s": time.time() - t0, "loadavg_1min_after": load})
                print(f"round {round_index} {backend:12s} {kind:8s} p50 {result['p50']:9.2f} ms "
                      f"mean {result['mean']:9.2f} ms  load {load:.1f}", flush=True)

    summary = {}
    for backend in backends:
        rows = [m for m in measurements if m["backend"] == backend]
        h = [m["p50"] for m in rows if m["kind"] == "harness"]
        b = [m["p50"] for m in rows if m["kind"] == "bare"]
        ratios = [hp / bp for hp, bp in zip(h, b)]
        overhead = statistics.median(h) / statistics.median(b) - 1
        summary[backend] = {
            "harness_p50_ms_per_round": h, "bare_p50_ms_per_round": b,
            "harness_p50_ms_median": statistics.median(h), "bare_p50_ms_median": statistics.median(b),
            "overhead_of_medians": overhead, "paired_ratio_median": statistics.median(ratios) - 1,
            "within_5_percent": abs(overhead) <= 0.05,
        }
    report = {
        "what": "segdeploy bench (CLI, subprocess cell) p50 vs a bare perf_counter loop, batch 1, alternating",
        "command": " ".join([Path(PY).name, "benchmarks/harness_overhead.py"] + sys.argv[1:]),
        "run": str(run), "model": "deeplabv3plus resnet50 (random init, 1 training step) 256x256",
        "threads": args.threads, "iters": args.iters, "warmup": args.warmup, "rounds": args.rounds,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "note": "see loadavg_1min_after per measurement for how busy the machine was"},
        "seconds": time.time() - started, "summary": summary, "measurements": measurements,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    for backend, s in summary.items():
        print(f"{backend:12s} harness {s['harness_p50_ms_median']:9.2f} ms  bare {s['bare_p50_ms_median']:9.2f} ms  "
              f"overhead {100 * s['overhead_of_medians']:+.1f}% (paired {100 * s['paired_ratio_median']:+.1f}%)  "
              f"within 5%: {s['within_5_percent']}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
