"""Start-up time of `segdeploy train`: from starting the command to its first training step, on
Kvasir-SEG at 256 px, with the dataset cache cold (an empty cache folder: every image decoded and written)
and warm (the cache written by the cold run: memory-mapped). Not a test: results go to
benchmarks/results/startup.json (goal: warm at least 5x faster than cold).

Each measurement is a fresh `python -m segdeploy train ...` process; a small wrapper stops it at the first
training step (when the first batch is handed to the model) and reports the time. Cold and warm alternate (`--rounds` pairs,
each cold run with a new empty cache folder), so load from other jobs hits both alike. The wrapper also
reports how much of the start-up was importing segdeploy's modules (torch, smp) and building the datasets.

    python benchmarks/startup.py --data-root ../shared/datasets/kvasir-seg --size 256 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Runs in the child: time the imports, the dataset builds, and stop at the first training step.
WRAPPER = r"""
import json, os, sys, time
marks = {"python_started": time.time()}
import segdeploy.training.loop as loop
from segdeploy.data import registry
marks["imported"] = time.time()
build = registry.build_dataset
data_seconds = [0.0]
def timed_build(*args, **kwargs):
    start = time.perf_counter()
    try:
        return build(*args, **kwargs)
    finally:
        data_seconds[0] += time.perf_counter() - start
loop.build_dataset = timed_build
to_device = loop.to_device
def first_step(*args, **kwargs):  # the first batch handed to the model: the first training step starts
    marks["first_step"] = time.time()
    marks["dataset_seconds"] = data_seconds[0]
    with open(os.environ["STARTUP_MARKS"], "w") as f:
        json.dump(marks, f)
    os._exit(0)
loop.to_device = first_step
from segdeploy.cli import app
sys.argv = ["segdeploy"] + sys.argv[1:]
app()
"""


def measure(args, cache_dir: Path, output: Path) -> dict:
    marks_file = Path(tempfile.mktemp(suffix=".json"))
    env = {**os.environ, "SEGDEPLOY_CACHE": str(cache_dir), "STARTUP_MARKS": str(marks_file),
           "PYTHONPATH": str(REPO)}
    env.pop("SEGDEPLOY_NO_CACHE", None)
    command = [sys.executable, "-c", WRAPPER, "train", "--dataset", "kvasir", "--data-root", args.data_root,
               "--size", str(args.size), "--epochs", "1", "--threads", str(args.threads), "--device", "cpu",
               "--output", str(output), "--overwrite"]
    started = time.time()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    marks = json.loads(marks_file.read_text())
    marks_file.unlink()
    return {"seconds_to_first_step": marks["first_step"] - started,
            "interpreter_start_seconds": marks["python_started"] - started,
            "import_seconds": marks["imported"] - marks["python_started"],
            "dataset_seconds": marks["dataset_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/datasets/kvasir-seg")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/startup.json")
    args = parser.parse_args()
    args.data_root = str(Path(args.data_root).resolve())
    rows = {"cold": [], "warm": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            cache = Path(tmp) / f"cache{round_index}"
            for kind in ("cold", "warm"):
                rows[kind].append(measure(args, cache, Path(tmp) / "run"))
                print(f"round {round_index + 1} {kind}: {rows[kind][-1]}", flush=True)
    median = {kind: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for kind, runs in rows.items()}
    ratios = [c["seconds_to_first_step"] / w["seconds_to_first_step"] for c, w in zip(rows["cold"], rows["warm"])]
    from segdeploy.core import fileio
    from segdeploy.core.env import environment

    fileio.write_json(args.output, {
        "benchmark": "startup", "command": "segdeploy train --dataset kvasir --size 256 (880 train + 120 val images)",
        "settings": vars(args), "runs": rows, "median": median,
        "cold_over_warm_per_round": ratios, "cold_over_warm_median": statistics.median(ratios),
        "dataset_cold_over_warm_median": statistics.median(
            c["dataset_seconds"] / w["dataset_seconds"] for c, w in zip(rows["cold"], rows["warm"])),
        "goal": "warm >= 5x faster than cold", "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "environment": environment(args.threads)})
    print(f"cold/warm median {statistics.median(ratios):.2f}x; wrote {args.output}")


if __name__ == "__main__":
    main()
