"""The 12-cell bench before (fixed 50 timed iterations: main's behaviour) and after (each cell until the 95%
interval of its median is within 2%, or 10 s), alternating whole `segdeploy bench` commands (issue 20, part 3).

    python benchmarks/bench_ci.py --run runs/dlv3p-r50-u8 --before-root /work/main --rounds 1

RUN: a DeepLabV3+ R50 at 256 px (random init: 1 training step on synthetic data) with model.onnx and an INT8
graph. Each command runs `segdeploy bench RUNCOPY --backends torch,torch+cl,onnxruntime,openvino --precision
fp32,int8 --batch-sizes 1,8 --threads 2 --no-accuracy` (6 variants x 2 batch sizes, every cell in a fresh
subprocess) from one source tree: `--before-root` (main's code) or this checkout. RUNCOPY is a view of RUN
(config, checkpoints and graphs by symlink) per side, so neither overwrites the other's bench.json. The order
alternates per round (after, before; before, after; ...). Records wall time, the load average around each
command, and every row's p50, interval, iterations, stop reason and cell seconds. Writes
benchmarks/results/bench_ci.json and bench_ci.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["--backends", "torch,torch+cl,onnxruntime,openvino", "--precision", "fp32,int8", "--batch-sizes", "1,8",
           "--threads", "2", "--no-accuracy"]


def run_view(run: Path, name: str) -> Path:
    """A run directory whose config, checkpoints and graphs are RUN's (symlinks); bench.json is its own."""
    view = run.parent / f"{run.name}-{name}"
    (view / "export").mkdir(parents=True, exist_ok=True)
    for item in ("config.toml", "history.csv", "checkpoints"):
        if not (view / item).exists():
            (view / item).symlink_to((run / item).resolve())
    for item in (run / "export").iterdir():
        if not (view / "export" / item.name).exists():
            (view / "export" / item.name).symlink_to(item.resolve())
    return view


def one_bench(source: Path, view: Path, python: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(source)}
    load_before = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.run([python, "-m", "segdeploy", "bench", str(view), *COMMAND], cwd=source, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"bench from {source} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    report = json.loads((view / "bench.json").read_text())
    rows = [{key: row.get(key) for key in ("variant", "precision", "batch_size", "status", "iterations", "stop_reason",
                                            "p50_ci_ms", "p50_ci_rel", "timed_s", "warmup_iterations", "cell_seconds")}
            | {"p50_ms": (row.get("latency_ms") or {}).get("p50")} for row in report["results"]]
    return {"source": str(source), "wall_s": wall, "cells_s": sum(r["cell_seconds"] or 0 for r in rows),
            "load_average_before": load_before, "load_average_after": os.getloadavg(), "rows": rows}


def estimate_fixed_count(run: dict, iterations: int = 50) -> dict:
    """What main's fixed count would have cost on the same cells: each cell's time outside its timed loop
    (start-up, warm-up) as measured, plus `iterations` x its mean measured latency. An estimate from
    measured rows, for when the before side cannot be run in the time there is (the table says which)."""
    cells = []
    for row in run["rows"]:
        if row["timed_s"] is None or not row["iterations"]:
            continue
        per_iteration = row["timed_s"] / row["iterations"]
        cells.append(row["cell_seconds"] - row["timed_s"] + iterations * per_iteration)
    outside = run["wall_s"] - run["cells_s"]
    return {"iterations": iterations, "cells_s": sum(cells), "wall_s": outside + sum(cells),
            "how": "per cell: measured cell seconds - timed seconds + 50 x (timed seconds / iterations); plus the "
                   "command's time outside cells"}


def markdown(report: dict) -> str:
    lines = ["# 12-cell bench: fixed 50 iterations (before) vs until the median is sure (after)", "",
             f"DeepLabV3+ R50, 256 px, random init, 2 threads, `segdeploy bench RUN {' '.join(COMMAND)}`; "
             f"{report['cpu']}. Load average (1/5/15 min) before and after each command below (2 cores: above ~2.5 "
             "means other work shared them).", "",
             *([report["note"], ""] if report.get("note") else []),
             "| round | side | wall s | sum of cell s | load before | load after |", "| ---: | --- | ---: | ---: | --- | --- |"]
    for run in report["runs"]:
        lines.append(f"| {run['round']} | {run['side']} | {run['wall_s']:.0f} | {run['cells_s']:.0f} "
                     f"| {' / '.join(f'{x:.1f}' for x in run['load_average_before'])} "
                     f"| {' / '.join(f'{x:.1f}' for x in run['load_average_after'])} |")
    for run in report["runs"]:
        if run["side"] == "after":
            guess = estimate_fixed_count(run)
            lines.append(f"| {run['round']} | before, **estimated** from the after rows ({guess['how']}) "
                         f"| {guess['wall_s']:.0f} | {guess['cells_s']:.0f} | | |")
    for run in report["runs"]:
        lines += ["", f"## round {run['round']}, {run['side']}", "",
                  "| variant | precision | batch | p50 ± ci ms | ci / p50 % | iterations | stopped | timed s | cell s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
        for row in run["rows"]:
            ci = row["p50_ci_ms"]
            half = f" ± {max(row['p50_ms'] - ci[0], ci[1] - row['p50_ms']):.2f}" if ci else ""
            lines.append(f"| {row['variant']} | {row['precision']} | {row['batch_size']} | "
                         f"{'-' if row['p50_ms'] is None else format(row['p50_ms'], '.2f')}{half} "
                         f"| {'-' if row['p50_ci_rel'] is None else format(100 * row['p50_ci_rel'], '.1f')} "
                         f"| {row['iterations']} | {row['stop_reason'] or 'fixed count'} "
                         f"| {'-' if row['timed_s'] is None else format(row['timed_s'], '.1f')} "
                         f"| {row['cell_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "dlv3p-r50-u8")
    parser.add_argument("--before-root", type=Path, default=Path("/work/main"))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sides", default="after,before", help="which sides, in round 0's order")
    parser.add_argument("--rewrite", action="store_true", help="only rewrite the .md from the existing .json")
    parser.add_argument("--note", default=None, help="a paragraph for the .md (what happened, with --rewrite)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "bench_ci.json")
    args = parser.parse_args()
    if args.rewrite:
        report = json.loads(args.output.read_text())
        report["note"] = args.note or report.get("note")
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        args.output.with_suffix(".md").write_text(markdown(report))
        return
    from segdeploy.core.env import environment

    sources = {"before": args.before_root.resolve(), "after": ROOT}
    order = args.sides.split(",")
    report = {"what": __doc__.split("\n\n")[0], "command": " ".join(["python", "benchmarks/bench_ci.py"] + sys.argv[1:]),
              "bench_arguments": COMMAND, "cpu": environment(2).get("cpu"), "run": str(args.run), "runs": []}
    for round_index in range(args.rounds):
        for side in order if round_index % 2 == 0 else order[::-1]:
            result = one_bench(sources[side], run_view(args.run.resolve(), side), sys.executable)
            report["runs"].append({"round": round_index, "side": side, **result})
            print(f"round {round_index} {side}: {result['wall_s']:.0f} s wall, {result['cells_s']:.0f} s in cells, "
                  f"load {result['load_average_before'][0]:.1f} -> {result['load_average_after'][0]:.1f}", flush=True)
            args.output.write_text(json.dumps(report, indent=2) + "\n")
            args.output.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
