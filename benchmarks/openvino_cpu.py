"""OpenVINO next to every other CPU path of segdeploy, on Kvasir-trained models (issue 13). Not a test: it
measures and writes benchmarks/results/openvino_cpu.json, whatever the numbers are.

    python -m segdeploy train --dataset kvasir --data-root ../shared/datasets/kvasir-seg --model deeplabv3plus \\
        --encoder resnet50 --size 256 --epochs 4 --max-steps 25 --batch-size 8 --lr 1e-3 --output runs/kvasir-dlv3p-r50
    python -m segdeploy export runs/kvasir-dlv3p-r50 --precision fp32,int8          # symmetric INT8 (TensorRT's)
    python benchmarks/openvino_cpu.py runs/kvasir-dlv3p-r50 runs/kvasir-unet-r34 --threads 2

For each run it
1. writes the uint8-activation INT8 graph into a sibling run directory RUN-u8 (checkpoint, config and FP32
   graph shared by symlink; calibrated on the same images as RUN's INT8 graph), so that every path below
   goes through segdeploy's own registry (`build_runner`) and both INT8 graphs can be compared;
2. times segdeploy's OpenVINO runner exactly as a `segdeploy bench` cell does (prepare once, HostTimer around
   run + synchronize) against a bare OpenVINO loop (`compile_model` on the same file with the same hint,
   threads and precision, then `infer` / an AsyncInferQueue), in alternating pairs in one process;
3. times every CPU path at batch 1 and 8 in interleaved rounds (every variant once per round, so a burst of
   load from other jobs hits all of them), and measures mIoU and argmax agreement with torch FP32 on the
   whole validation split;
4. measures OpenVINO start-up (import + compile) in fresh processes: ONNX without cache, with a cold and a
   warm compile cache, and from an IR written by ov.save_model.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segdeploy.bench.timing import HostTimer, latency_summary, throughput_ips  # noqa: E402
from segdeploy.core.config import ExportConfig  # noqa: E402
from segdeploy.core.env import environment  # noqa: E402
from segdeploy.core.rundir import RunDir  # noqa: E402
from segdeploy.runtime.variants import RuntimeContext, Variant, build_runner, parse_variant  # noqa: E402

# (label, which INT8 graph: "sym" = RUN, "u8" = RUN-u8, variant spec, graph precision, batch sizes)
TABLE = [
    ("torch FP32", "sym", "torch", "fp32", (1, 8)),
    ("torch BF16 autocast", "sym", "torch+bf16", "fp32", (1, 8)),
    ("torch BF16 autocast, channels_last", "sym", "torch+bf16+cl", "fp32", (1, 8)),
    ("ONNX Runtime FP32", "sym", "onnxruntime", "fp32", (1, 8)),
    ("ONNX Runtime INT8 symmetric (TensorRT graph)", "sym", "onnxruntime", "int8", (1, 8)),
    ("ONNX Runtime INT8 uint8 activations", "u8", "onnxruntime", "int8", (1, 8)),
    ("OpenVINO FP32 (f32 inference)", "sym", "openvino", "fp32", (1, 8)),
    ("OpenVINO BF16 inference, FP32 graph", "sym", "openvino+bf16", "fp32", (1, 8)),
    ("OpenVINO INT8 symmetric, f32 rest", "sym", "openvino", "int8", (1, 8)),
    ("OpenVINO INT8 symmetric, bf16 rest", "sym", "openvino+bf16", "int8", (1, 8)),
    ("OpenVINO INT8 uint8, f32 rest", "u8", "openvino", "int8", (1, 8)),
    ("OpenVINO INT8 uint8, bf16 rest", "u8", "openvino+bf16", "int8", (1, 8)),
    ("OpenVINO FP32, throughput hint", "sym", "openvino+throughput", "fp32", (8,)),
    ("OpenVINO BF16, throughput hint", "sym", "openvino+bf16+throughput", "fp32", (8,)),
    ("OpenVINO INT8 symmetric bf16, throughput hint", "sym", "openvino+bf16+throughput", "int8", (8,)),
    ("OpenVINO INT8 uint8 bf16, throughput hint", "u8", "openvino+bf16+throughput", "int8", (8,)),
]
# harness vs bare loop: (which graph, variant spec, graph precision, batch)
PAIRS = [("sym", "openvino", "fp32", 1), ("sym", "openvino+bf16", "fp32", 1), ("sym", "openvino+bf16", "int8", 1),
         ("u8", "openvino+bf16", "int8", 1), ("sym", "openvino+bf16", "fp32", 8),
         ("sym", "openvino+bf16+throughput", "fp32", 8)]


def uint8_sibling(run: RunDir, calib_images: int) -> RunDir:
    """RUN-u8: RUN's config, checkpoints and FP32 graph by symlink; model.int8.onnx with uint8 activations."""
    from segdeploy.export.onnx import export_graphs

    sibling = RunDir(run.path.with_name(run.path.name + "-u8"))
    (sibling.path / "export").mkdir(parents=True, exist_ok=True)
    for name in ("config.toml", "history.csv", "checkpoints"):
        if not (sibling.path / name).exists():
            (sibling.path / name).symlink_to((run.path / name).resolve())
    for name in ("model.onnx", "model.json"):
        if not (sibling.export_dir / name).exists():
            (sibling.export_dir / name).symlink_to((run.export_dir / name).resolve())
    if not sibling.onnx_path("int8").exists():
        export_graphs(sibling, ExportConfig(precisions=["int8"], calib_images=calib_images, int8_activations="uint8"))
    return sibling


def bare_step(path: Path, spec: str, x: np.ndarray, threads: int):
    """The plainest OpenVINO loop on the same file, hint, precision and threads (independent of segdeploy)."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "bf16" if "bf16" in spec else "f32",
              "PERFORMANCE_HINT": "THROUGHPUT" if "throughput" in spec else "LATENCY",
              "INFERENCE_NUM_THREADS": threads}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    if "throughput" not in spec:
        request = compiled.create_infer_request()
        return lambda: request.infer({0: x})
    queue = ov.AsyncInferQueue(compiled)  # OpenVINO's optimal number of requests, one image each

    def step():
        for i in range(len(x)):
            queue.start_async({0: x[i:i + 1]})
        queue.wait_all()
    return step


def harness_vs_bare(runs: dict[str, RunDir], threads: int, pairs: int, warmup: int) -> list[dict]:
    from segdeploy.bench.cell import cell_input

    size = runs["sym"].load_config().data.size
    results = []
    for which, spec, graph, batch in PAIRS:
        run, variant = runs[which], parse_variant(spec, graph)
        x = cell_input(batch, size)
        runner = build_runner(variant, RuntimeContext(run, "cpu", threads))
        prepared, timer = runner.prepare(x), HostTimer()

        def harness(runner=runner, prepared=prepared, timer=timer):  # this iteration's, bound now
            return timer.measure(lambda: runner.run(prepared), runner.synchronize)
        step = bare_step(run.onnx_path(graph), spec, x, threads)

        def bare(step=step):
            start = time.perf_counter()
            step()
            return (time.perf_counter() - start) * 1e3
        for _ in range(warmup):
            harness(), bare()
        h, b = [], []
        for i in range(pairs):  # A B, B A, A B, ...: neither side always goes first
            if i % 2 == 0:
                h.append(harness()), b.append(bare())
            else:
                b.append(bare()), h.append(harness())
        ratios = [hi / bi - 1 for hi, bi in zip(h, b)]
        row = {"graph_run": which, "variant": variant.name, "graph": graph, "batch_size": batch,
               "harness_p50_ms": statistics.median(h), "bare_p50_ms": statistics.median(b),
               "overhead_of_medians": statistics.median(h) / statistics.median(b) - 1,
               "paired_overhead_median": statistics.median(ratios), "harness_ms": h, "bare_ms": b}
        row["within_5_percent"] = abs(row["paired_overhead_median"]) <= 0.05
        print(f"harness vs bare {variant.label} [{which}] batch {batch}: {row['harness_p50_ms']:.2f} vs "
              f"{row['bare_p50_ms']:.2f} ms, paired {100 * row['paired_overhead_median']:+.1f}%", flush=True)
        results.append(row)
        runner.close()
        del runner, prepared, step
    return results


BARE_PROCESS = r"""
import json, sys, time
import numpy as np
import openvino as ov
path, precision, threads, batch, size, warmup, iters = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
request = ov.Core().compile_model(path, "CPU", config).create_infer_request()
for _ in range(warmup):
    request.infer({0: x})
times = []
for _ in range(iters):
    start = time.perf_counter()
    request.infer({0: x})
    times.append((time.perf_counter() - start) * 1e3)
print(json.dumps(times))
"""


def process_rounds(runs: dict[str, RunDir], threads: int, rounds: int, iters: int) -> list[dict]:
    """Whole processes, alternating: a `segdeploy bench` cell (the subprocess `bench` runs per cell) and a bare
    OpenVINO script on the same file, precision, threads and hint, batch 1."""
    from segdeploy.bench.cell import cell_spec, run_cell_subprocess
    from segdeploy.bench.timing import WarmupPolicy
    from segdeploy.core.config import BenchConfig

    size = runs["sym"].load_config().data.size
    cfg = BenchConfig(device="cpu", threads=threads, iters=iters)
    results = []
    for which, spec, graph in (("sym", "openvino+bf16", "fp32"), ("sym", "openvino+bf16", "int8")):
        run, variant = runs[which], parse_variant(spec, graph)
        bench_p50, bare_p50 = [], []
        for _ in range(rounds):
            row = run_cell_subprocess(cell_spec(variant, run.path.resolve(), cfg, 1, size, WarmupPolicy()))
            bench_p50.append(row["latency_ms"]["p50"])
            out = subprocess.run([sys.executable, "-c", BARE_PROCESS, str(run.onnx_path(graph)), "bf16", str(threads),
                                  "1", str(size), "10", str(iters)], capture_output=True, text=True, check=True)
            bare_p50.append(float(np.median(json.loads(out.stdout))))
        ratios = [b / a - 1 for b, a in zip(bench_p50, bare_p50)]
        results.append({"variant": variant.name, "graph": graph, "batch_size": 1, "bench_cell_p50_ms": bench_p50,
                        "bare_process_p50_ms": bare_p50, "paired_overhead_median": statistics.median(ratios),
                        "overhead_of_medians": statistics.median(bench_p50) / statistics.median(bare_p50) - 1})
        print(f"bench cell vs bare process {variant.label}: {bench_p50} vs {bare_p50}", flush=True)
    return results


def timed_table(runs: dict[str, RunDir], threads: int, rounds: int, iters: dict[int, int], warmup: int) -> list[dict]:
    """Every (path, batch) of TABLE, once per round; all runners built first and kept."""
    from segdeploy.bench.cell import cell_input

    size = runs["sym"].load_config().data.size
    cells = []
    for label, which, spec, graph, batches in TABLE:
        variant = parse_variant(spec, graph)
        runner = build_runner(variant, RuntimeContext(runs[which], "cpu", threads))
        for batch in batches:
            cells.append({"label": label, "graph_run": which, "variant": variant, "runner": runner, "batch": batch,
                          "prepared": runner.prepare(cell_input(batch, size)), "latencies": [], "round_p50": []})
    timer = HostTimer()
    for r in range(rounds):
        for cell in cells:
            runner, prepared = cell["runner"], cell["prepared"]
            step = lambda: runner.run(prepared)  # noqa: E731 - the bench cell's step
            for _ in range(warmup):
                timer.measure(step, runner.synchronize)
            times = [timer.measure(step, runner.synchronize) for _ in range(iters[cell["batch"]])]
            cell["latencies"] += times
            cell["round_p50"].append(float(np.median(times)))
            time.sleep(0.05)  # let the previous runtime's spinning threads go idle
        print(f"round {r + 1}/{rounds} done, load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for cell in cells:
        latencies = np.array(cell["latencies"])
        rows.append({"label": cell["label"], "graph_run": cell["graph_run"], "variant": cell["variant"].name,
                     "graph": cell["variant"].graph, "precision": cell["variant"].precision,
                     "batch_size": cell["batch"], "latency_ms": latency_summary(latencies),
                     "round_p50_ms": cell["round_p50"], "throughput_ips": throughput_ips(cell["batch"], latencies)})
    for cell in cells:
        cell["runner"].close()
    return rows


def accuracy(runs: dict[str, RunDir], threads: int, val_images: int | None) -> dict[tuple[str, str, str], dict]:
    """mIoU and agreement with torch FP32 of every (graph run, variant, graph) on the validation split."""
    from segdeploy.evaluation.parity import measure_variants, validation_set

    found = {}
    for which, run in runs.items():
        variants = list(dict.fromkeys(parse_variant(spec, graph) for _, w, spec, graph, _ in TABLE if w == which))
        dataset, _ = validation_set(run, val_images)
        rows, reference = measure_variants(run, [v for v in variants if v != Variant("torch")], dataset,
                                           RuntimeContext(run, "cpu", threads))
        for row in rows:
            found[(which, row["variant"], row["graph"])] = {k: row.get(k) for k in (
                "miou", "miou_reference", "miou_delta", "argmax_agreement", "max_abs_err", "mean_abs_err", "status")}
        found[(which, "torch", None)] = {"miou": reference, "miou_reference": reference, "miou_delta": 0.0,
                                         "argmax_agreement": 1.0, "status": "ok"}
        found["images"] = len(dataset)
    return found


STARTUP = r"""
import sys, time
t0 = time.perf_counter()
import openvino as ov
config = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": int(sys.argv[2])}
if sys.argv[3] != "-":
    config["CACHE_DIR"] = sys.argv[3]
ov.Core().compile_model(sys.argv[1], "CPU", config)
print(time.perf_counter() - t0)
"""


def startup(run: RunDir, threads: int, repeats: int = 3) -> dict:
    """Seconds from `import openvino` to a compiled model, each in a fresh process (bf16 inference)."""
    import openvino as ov

    def seconds(path: Path, cache: str) -> float:
        out = subprocess.run([sys.executable, "-c", STARTUP, str(path), str(threads), cache],
                             capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    result = {}
    with tempfile.TemporaryDirectory(prefix="ov-startup-") as tmp:
        for graph in ("fp32", "int8"):
            onnx_path = run.onnx_path(graph)
            ir = Path(tmp, f"{graph}.xml")
            ov.save_model(ov.Core().read_model(str(onnx_path)), str(ir))
            cache = str(Path(tmp, f"cache-{graph}"))
            cold = seconds(onnx_path, cache)
            result[graph] = {
                "onnx_no_cache_s": statistics.median(seconds(onnx_path, "-") for _ in range(repeats)),
                "onnx_cache_cold_s": cold,
                "onnx_cache_warm_s": statistics.median(seconds(onnx_path, cache) for _ in range(repeats)),
                "ir_no_cache_s": statistics.median(seconds(ir, "-") for _ in range(repeats))}
            print(f"start-up {graph}: {result[graph]}", flush=True)
    return result


def training_summary(run: RunDir) -> dict:
    cfg, history = run.load_config(), run.read_history()
    return {"model": cfg.model.name, "encoder": cfg.model.encoder, "size": cfg.data.size, "epochs": len(history),
            "max_steps_per_epoch": cfg.train.max_steps, "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
            "encoder_weights": cfg.model.encoder_weights,
            "best_val_miou": max((h["val_miou"] for h in history if h.get("val_miou") is not None), default=None),
            "train_seconds": sum(h.get("seconds") or 0 for h in history)}


def measure_run(path: Path, args) -> dict:
    run = RunDir.open(path)
    int8_sidecar = json.loads(run.onnx_sidecar("int8").read_text())
    runs = {"sym": run, "u8": uint8_sibling(run, int8_sidecar["int8"]["calibration"]["images"])}
    started = time.time()
    pairs = harness_vs_bare(runs, args.threads, args.pairs, args.warmup)
    processes = process_rounds(runs, args.threads, args.process_rounds, args.iters * 3) if args.process_rounds else []
    table = timed_table(runs, args.threads, args.rounds, {1: args.iters, 8: args.iters_batch8}, args.warmup)
    found = accuracy(runs, args.threads, args.val_images)
    for row in table:
        row.update(found.get((row["graph_run"], row["variant"], row["graph"]), {}))
    return {"run": str(path), "training": training_summary(run), "int8_calibration": int8_sidecar["int8"],
            "val_images": found["images"], "harness_vs_bare": pairs, "bench_cell_vs_bare_process": processes,
            "table": table,
            "startup": startup(run, args.threads) if args.startup else None, "seconds": time.time() - started,
            "load_average_1min_at_end": os.getloadavg()[0]}


def targets(result: dict) -> dict:
    rows = [r for r in result["table"] if r["batch_size"] == 1]
    ort_u8 = next(r for r in rows if r["label"] == "ONNX Runtime INT8 uint8 activations")
    accurate = [r for r in rows if r.get("miou_delta") is not None and abs(r["miou_delta"]) <= 0.005]
    fastest = min(accurate, key=lambda r: r["latency_ms"]["p50"])
    return {"fastest_within_half_point": fastest["label"], "fastest_p50_ms": fastest["latency_ms"]["p50"],
            "ort_int8_uint8_p50_ms": ort_u8["latency_ms"]["p50"],
            "speedup_vs_ort_int8_uint8": ort_u8["latency_ms"]["p50"] / fastest["latency_ms"]["p50"],
            "fastest_miou_delta_pt": 100 * fastest["miou_delta"],
            "met_2x": ort_u8["latency_ms"]["p50"] / fastest["latency_ms"]["p50"] >= 2.0,
            "harness_within_5_percent": all(p["within_5_percent"] for p in result["harness_vs_bare"])}


def print_table(result: dict) -> None:
    print(f"\n{result['run']} ({result['val_images']} validation images)")
    print("| path | variant | batch | p50 ms | img/s | mIoU % | delta pt | agreement % |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in result["table"]:
        miou = "-" if r.get("miou") is None else f"{100 * r['miou']:.2f}"
        delta = "-" if r.get("miou_delta") is None else f"{100 * r['miou_delta']:+.2f}"
        agree = "-" if r.get("argmax_agreement") is None else f"{100 * r['argmax_agreement']:.3f}"
        print(f"| {r['label']} | `{r['variant']}` ({r['graph']}) | {r['batch_size']} | {r['latency_ms']['p50']:.1f} | "
              f"{r['throughput_ips']:.1f} | {miou} | {delta} | {agree} |")
    print(json.dumps(result["targets"], indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="trained runs with export --precision fp32,int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per round at batch 1")
    parser.add_argument("--iters-batch8", type=int, default=3, help="timed iterations per round at batch 8")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=12, help="harness/bare pairs per OpenVINO setting")
    parser.add_argument("--process-rounds", type=int, default=3, help="bench cell / bare process rounds (0: skip)")
    parser.add_argument("--val-images", type=int, default=None, help="cap on validation images (default: all)")
    parser.add_argument("--no-startup", dest="startup", action="store_false")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "openvino_cpu.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    report = {"benchmark": "openvino_cpu", "command": " ".join(["python", "benchmarks/openvino_cpu.py"] + sys.argv[1:]),
              "threads": args.threads, "rounds": args.rounds, "iters": {"1": args.iters, "8": args.iters_batch8},
              "warmup": args.warmup, "environment": environment(args.threads), "runs": []}
    for path in args.runs:
        result = measure_run(path, args)
        result["targets"] = targets(result)
        report["runs"].append(result)
        print_table(result)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1, default=str) + "\n")  # after each run: partial results survive
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
