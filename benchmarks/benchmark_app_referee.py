"""Referee for `segdeploy bench`'s OpenVINO cell: OpenVINO's own benchmark_app on the same graph, interleaved.

    python benchmarks/benchmark_app_referee.py --run runs/dlv3p-r50 --u8-run runs/dlv3p-r50-u8 --rounds 3

For each graph (FP32 model.onnx; INT8 with symmetric int8 activations, RUN's model.int8.onnx; INT8 with uint8
activations, U8RUN's model.int8.onnx), batch 1, alternating per round (A B, then B A):
- A: `benchmark_app -m GRAPH -d CPU -hint none -nstreams 1 -nthreads 2 -nireq 1 -api sync -shape [1,3,H,W]
  -infer_precision f32 -t SECONDS`: its own loop for SECONDS, reporting the median of its latencies;
  `-infer_precision f32` because segdeploy's `openvino` variant compiles with f32 (OpenVINO's default on a
  CPU with BF16 arithmetic is bf16) and the graphs must run at the same precision;
- B: the `openvino` cell exactly as `segdeploy bench` runs it (`cell_spec` + `run_cell_subprocess`: a fresh
  process, warm-up until stable, then timed until the 95% interval of the median is within 2% or 10 s).
Reports each side's medians, the ratio segdeploy / benchmark_app per round and the ratio of the medians over
rounds, with the load average around every measurement (the machine is shared) and what each side compiled
with (pinning, threads, streams, precision). Writes benchmarks/results/benchmark_app_referee.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAT = re.compile(r"^\[ INFO \]\s+(Median|Average|Min|Max):\s+([\d.]+) ms", re.M)
COUNT = re.compile(r"Count:\s+(\d+) iterations")
PROPERTY = re.compile(r"^\[ INFO \]\s+(ENABLE_CPU_PINNING|INFERENCE_NUM_THREADS|NUM_STREAMS|INFERENCE_PRECISION_HINT"
                      r"|PERFORMANCE_HINT|ENABLE_HYPER_THREADING|SCHEDULING_CORE_TYPE): (.*)$", re.M)


def benchmark_app(graph: Path, hw: tuple[int, int], seconds: float, threads: int, extra: list[str]) -> dict:
    app = Path(sys.executable).with_name("benchmark_app")
    command = [str(app) if app.exists() else "benchmark_app", "-m", str(graph), "-d", "CPU", "-hint", "none",
               "-nstreams", "1", "-nthreads", str(threads), "-nireq", "1", "-api", "sync",
               "-shape", f"[1,3,{hw[0]},{hw[1]}]", "-infer_precision", "f32", "-t", str(seconds), *extra]
    load = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark_app failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    stats = {name.lower() + "_ms": float(value) for name, value in STAT.findall(proc.stdout)}
    return {**stats, "iterations": int(COUNT.search(proc.stdout).group(1)), "wall_s": time.perf_counter() - started,
            "properties": dict(PROPERTY.findall(proc.stdout)), "command": " ".join(command),
            "load_average_before": load, "load_average_after": os.getloadavg()}


def segdeploy_cell(run_dir: Path, precision: str, threads: int) -> dict:
    from segdeploy.bench.cell import cell_spec, run_cell_subprocess
    from segdeploy.bench.timing import WarmupPolicy
    from segdeploy.core.config import BenchConfig
    from segdeploy.core.rundir import RunDir
    from segdeploy.runtime.variants import parse_variant

    cfg = BenchConfig(backends=["openvino"], precisions=[precision], batch_sizes=[1], threads=threads, device="cpu")
    size = RunDir(run_dir).load_config().data.size
    variant = parse_variant("openvino", precision)
    spec = cell_spec(variant, run_dir.resolve(), cfg, 1, size,
                     WarmupPolicy(cfg.warmup, cfg.warmup_window, cfg.warmup_rtol, cfg.max_warmup))
    load = os.getloadavg()
    row = run_cell_subprocess(spec, cfg.cell_timeout_s)
    if row["status"] != "ok":
        raise SystemExit(f"segdeploy cell failed: {row['status']}")
    return {"median_ms": row["latency_ms"]["p50"], "average_ms": row["latency_ms"]["mean"],
            "p50_ci_ms": row["p50_ci_ms"], "iterations": row["iterations"], "stop_reason": row["stop_reason"],
            "timed_s": row["timed_s"], "warmup_iterations": row["warmup_iterations"], "wall_s": row["cell_seconds"],
            "properties": row.get("runtime_properties"), "load_average_before": load,
            "load_average_after": os.getloadavg()}


def runner_properties(graph: Path, threads: int) -> dict:
    """What segdeploy's `openvino` runner compiles with, read back from OpenVINO (pinning is not in bench rows)."""
    import openvino as ov

    from segdeploy.runtime.openvino_runner import compile_config

    compiled = ov.Core().compile_model(str(graph), "CPU", compile_config("f32", "latency", threads))
    return {key: str(compiled.get_property(key)) for key in (
        "ENABLE_CPU_PINNING", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT",
        "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE")}


def markdown(report: dict) -> str:
    lines = ["# benchmark_app vs segdeploy bench's OpenVINO cell (batch 1)", "",
             f"{report['cpu']}, {report['threads']} threads, OpenVINO {report['openvino']}; benchmark_app "
             f"`-hint none -nstreams 1 -nthreads {report['threads']} -nireq 1 -api sync -infer_precision f32 "
             f"-t {report['seconds']}`, interleaved (order flipped every round). 1-minute load average "
             "before each measurement in the table (2 cores: above ~2.5 means other work shared them).", "",
             "| graph | benchmark_app median ms (per round) | segdeploy p50 ms (per round) | segdeploy / benchmark_app "
             "(ratio of medians) | per round | load |", "| --- | --- | --- | ---: | --- | --- |"]
    for graph, result in report["graphs"].items():
        rounds = result["rounds"]

        def joined(values, spec=".1f"):
            return ", ".join(format(value, spec) for value in values)
        lines.append(f"| {graph} | {joined(r['benchmark_app']['median_ms'] for r in rounds)} "
                     f"| {joined(r['segdeploy']['median_ms'] for r in rounds)} | {result['ratio_of_medians']:.3f} "
                     f"| {joined((r['ratio'] for r in rounds), '.3f')} "
                     f"| {joined(r['benchmark_app']['load_average_before'][0] for r in rounds)} |")
    verdicts = ", ".join(f"{graph} {result['within_5_percent']}" for graph, result in report["graphs"].items())
    lines += ["", f"Within 5%: {verdicts}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "dlv3p-r50")
    parser.add_argument("--u8-run", type=Path, default=ROOT / "runs" / "dlv3p-r50-u8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="benchmark_app -t (whole seconds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--graphs", default="fp32,int8-symmetric,int8-uint8")
    parser.add_argument("--app-extra", default="", help="more benchmark_app flags, e.g. '-pin NO'")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "benchmark_app_referee.json")
    args = parser.parse_args()
    import openvino

    from segdeploy.core.env import environment
    from segdeploy.core.rundir import RunDir
    from segdeploy.core.size import input_hw

    graphs = {"fp32": (args.run, "fp32"), "int8-symmetric": (args.run, "int8"), "int8-uint8": (args.u8_run, "int8")}
    hw = tuple(input_hw(RunDir(args.run).load_config().data.size))
    report = {"what": "benchmark_app (OpenVINO's) vs segdeploy bench's openvino cell, same graph, batch 1, interleaved",
              "command": " ".join(["python", "benchmarks/benchmark_app_referee.py"] + sys.argv[1:]),
              "cpu": environment(args.threads).get("cpu"), "openvino": openvino.__version__,
              "threads": args.threads, "seconds": args.seconds, "graphs": {}}
    for name in args.graphs.split(","):
        run_dir, precision = graphs[name]
        graph = RunDir(run_dir).onnx_path(precision)
        rounds = []
        for index in range(args.rounds):
            sides = ["benchmark_app", "segdeploy"] if index % 2 == 0 else ["segdeploy", "benchmark_app"]
            result = {}
            for side in sides:
                result[side] = (benchmark_app(graph, hw, args.seconds, args.threads, args.app_extra.split())
                                if side == "benchmark_app" else segdeploy_cell(run_dir, precision, args.threads))
            result["ratio"] = result["segdeploy"]["median_ms"] / result["benchmark_app"]["median_ms"]
            rounds.append(result)
            print(f"{name} round {index}: benchmark_app {result['benchmark_app']['median_ms']:.2f} ms, segdeploy "
                  f"{result['segdeploy']['median_ms']:.2f} ms ({result['segdeploy']['stop_reason']}), ratio "
                  f"{result['ratio']:.3f}, load {os.getloadavg()[0]:.1f}", flush=True)
        ratio = (statistics.median(r["segdeploy"]["median_ms"] for r in rounds)
                 / statistics.median(r["benchmark_app"]["median_ms"] for r in rounds))
        report["graphs"][name] = {"graph": str(graph), "segdeploy_compiled_with": runner_properties(graph, args.threads),
                                  "rounds": rounds, "ratio_of_medians": ratio,
                                  "median_of_ratios": statistics.median(r["ratio"] for r in rounds),
                                  "within_5_percent": abs(ratio - 1) <= 0.05}
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        args.output.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
