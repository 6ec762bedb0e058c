"""INT8 on every x86 ISA (issue 20): the old INT8 graph (ONNX Runtime's quantize_static, symmetric, 8-bit
weights) against the new ones (NNCF, the CPU default; ONNX Runtime with reduce_range for uint8 activations),
through ONNX Runtime and OpenVINO, natively and with oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2 and
OV_CPU_MAX_ISA=AVX2: the kernels of a CPU without VNNI, whose VPMADDUBSW int16 sums saturate). Not a test: it
measures and writes benchmarks/results/int8_isa.json and .md, whatever the numbers are.

    python -m segdeploy train --dataset kvasir --data-root ../shared/datasets/kvasir-seg --model unet \\
        --encoder resnet18 --encoder-weights none --size 128 --epochs 4 --max-images 440 --output runs/k-r18
    python benchmarks/int8_isa.py runs/k-r18 --threads 2

For each INT8 graph it writes a sibling run directory RUN-int8-NAME (config, checkpoints and FP32 graph by
symlink), so every path goes through segdeploy's registry (`build_runner`). Every measurement runs in a worker
subprocess, once without and once with the cap, against torch FP32 logits computed once in the parent: mIoU
delta and argmax agreement on the whole validation split, then batch-1 latency in interleaved rounds.
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

from segdeploy.core import fileio  # noqa: E402
from segdeploy.core.config import ExportConfig  # noqa: E402
from segdeploy.core.rundir import RunDir  # noqa: E402

AVX2_CAP = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2"}
# name -> (what it is, ExportConfig overrides)
GRAPHS = {
    "ort-sym": ("old default: ONNX Runtime quantize_static, symmetric int8 activations, 8-bit weights",
                {"int8_quantizer": "ort", "int8_activations": "int8"}),
    "ort-u8-rr": ("ONNX Runtime quantize_static, uint8 activations, reduce_range (7-bit weights)",
                  {"int8_quantizer": "ort", "int8_activations": "uint8"}),
    "nncf": ("default: NNCF, preset performance, 7-bit convolution weights (overflow fix enable), depthwise "
             "convolutions with a signed input in float", {"int8_quantizer": "nncf"}),
}
ROWS = [("fp32", "onnxruntime", "fp32"), ("fp32", "openvino", "fp32")] + [
    (name, backend, "int8") for name in GRAPHS for backend in ("onnxruntime", "openvino")]


def sibling(run: RunDir, name: str, calib_images: int) -> RunDir:
    from segdeploy.export.onnx import export_graphs

    other = RunDir(run.path.with_name(f"{run.path.name}-int8-{name}"))
    (other.path / "export").mkdir(parents=True, exist_ok=True)
    for item in ("config.toml", "history.csv", "checkpoints"):
        if not (other.path / item).exists():
            (other.path / item).symlink_to((run.path / item).resolve())
    for item in ("model.onnx", "model.json"):
        if not (other.export_dir / item).exists():
            (other.export_dir / item).symlink_to((run.export_dir / item).resolve())
    if not other.onnx_path("int8").exists():
        started = time.perf_counter()
        export_graphs(other, ExportConfig(precisions=["int8"], calib_images=calib_images, **GRAPHS[name][1]))
        print(f"{name}: quantised in {time.perf_counter() - started:.0f} s", flush=True)
    return other


def validation(run: RunDir) -> tuple[np.ndarray, np.ndarray, int]:
    from segdeploy.export.nncf_int8 import validation_arrays

    return validation_arrays(run.load_config())


def worker(args) -> None:
    """In this process (capped or not): accuracy of every row against the torch logits, then latency."""
    from segdeploy.core.env import isa_facts
    from segdeploy.core.errors import first_line
    from segdeploy.data.metrics import confusion_matrix, summarize
    from segdeploy.runtime.variants import RuntimeContext, build_runner, parse_variant

    images, masks, classes = validation(RunDir.open(args.runs[0]))
    reference = np.load(args.reference)
    ref_miou = summarize(confusion_matrix(masks, reference.argmax(1), classes))["miou"]
    top2 = np.sort(reference, axis=1)
    decided = (top2[:, -1] - top2[:, -2]) >= 0.5  # pixels torch FP32 is sure of (the runner contract's rule)
    runners, results = {}, []
    for graph, backend, precision in ROWS:
        run = RunDir.open(args.runs[0] if graph == "fp32" else f"{args.runs[0]}-int8-{graph}")
        runner = build_runner(parse_variant(backend, precision), RuntimeContext(run, "cpu", args.threads))
        try:
            predictions = np.concatenate([runner.infer(images[i:i + 8]).argmax(1) for i in range(0, len(images), 8)])
        except Exception as exc:  # a runtime that refuses a graph is a result: recorded, the other rows go on
            runner.close()
            results.append({"graph": graph, "backend": backend, "failed": first_line(exc)})
            continue
        miou = summarize(confusion_matrix(masks, predictions, classes))["miou"]
        row = {"graph": graph, "backend": backend, "miou": miou, "miou_delta_points": 100 * (miou - ref_miou),
               "argmax_agreement": float((predictions == reference.argmax(1)).mean()),
               "decided_agreement": float((predictions == reference.argmax(1))[decided].mean()),
               "decided_fraction": float(decided.mean())}
        if backend == "openvino":
            ops = runner.compiled.get_runtime_model().get_ops()
            row["conv_primitives"] = sorted({op.get_rt_info()["primitiveType"].astype(str) for op in ops
                                             if op.get_rt_info()["layerType"].astype(str) == "Convolution"})
        runners[(graph, backend)] = runner
        results.append(row)
    x = images[:1]
    times = {key: [] for key in runners}
    for runner in runners.values():
        for _ in range(args.warmup):
            runner.infer(x)
    for _ in range(args.rounds):  # interleaved: a burst of load from other jobs hits every row alike
        for key, runner in runners.items():
            for _ in range(args.iters):
                started = time.perf_counter()
                runner.infer(x)
                times[key].append(1e3 * (time.perf_counter() - started))
    for row in (row for row in results if "failed" not in row):
        samples = times[(row["graph"], row["backend"])]
        row.update(latency_ms_p50=statistics.median(samples), latency_samples=len(samples))
    for runner in runners.values():
        runner.close()
    fileio.write_json(Path(args.out), {"isa": isa_facts(), "rows": results, "reference_miou": ref_miou})


def run_worker(args, cap: dict[str, str], out: Path, reference: Path) -> dict:
    command = [sys.executable, __file__, *args.runs, "--worker", "--out", str(out), "--reference", str(reference),
               "--threads", str(args.threads), "--rounds", str(args.rounds), "--iters", str(args.iters),
               "--warmup", str(args.warmup)]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, **cap})
    print(f"worker {cap or 'native'} done in {time.perf_counter() - started:.0f} s", flush=True)
    return fileio.read_json(out)


def markdown(result: dict) -> str:
    lines = [f"# INT8 on every x86 ISA ({result['run']})", "",
             f"Machine: {result['machine']['cpu']}, {result['threads']} threads, ISA {result['machine']['cpu_isa']}; "
             f"shared with other work (load average {result['load_average_1min_at_start']:.1f} at start, "
             f"{result['load_average_1min_at_end']:.1f} at end). Torch FP32 mIoU {100 * result['reference_miou']:.2f} "
             f"on {result['validation_images']} validation images. Latency: batch 1, median of "
             f"{result['rounds']} interleaved rounds x {result['iters']} iterations. Decided pixels: torch FP32's "
             f"top-2 logit margin >= 0.5 ({100 * result['native']['rows'][0]['decided_fraction']:.1f}% of them).", "",
             "| graph | backend | ISA | mIoU delta (points) | agreement % | on decided pixels % | p50 ms | "
             "INT8 conv primitives |", "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for label, part in (("native", result["native"]), ("AVX2 cap", result["avx2_cap"])):
        for row in part["rows"]:
            if "failed" in row:
                lines.append(f"| {row['graph']} | {row['backend']} | {label} ({part['isa']['effective_cpu_isa']}) | "
                             f"failed: {row['failed'][-160:]} | | | | |")
                continue
            lines.append(f"| {row['graph']} | {row['backend']} | {label} ({part['isa']['effective_cpu_isa']}) | "
                         f"{row['miou_delta_points']:+.2f} | {100 * row['argmax_agreement']:.3f} | "
                         f"{100 * row['decided_agreement']:.3f} | "
                         f"{row['latency_ms_p50']:.2f} | {', '.join(row.get('conv_primitives', [])) or '-'} |")
    lines += ["", "Graphs: " + "; ".join(f"`{name}`: {text}" for name, (text, _) in GRAPHS.items()) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs=1, help="a trained run directory with export/model.onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "int8_isa.json"))
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from segdeploy.core.env import environment
    from segdeploy.runtime.variants import RuntimeContext, build_runner, parse_variant

    load_start = os.getloadavg()[0]
    run = RunDir.open(args.runs[0])
    for name in GRAPHS:
        sibling(run, name, args.calib_images)
    images, _, _ = validation(run)
    torch_runner = build_runner(parse_variant("torch"), RuntimeContext(run, "cpu", args.threads))
    reference = np.concatenate([torch_runner.infer(images[i:i + 8]) for i in range(0, len(images), 8)])
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="int8-isa-") as folder:
        scratch = Path(folder)
        np.save(scratch / "reference.npy", reference)
        native = run_worker(args, {}, scratch / "native.json", scratch / "reference.npy")
        capped = run_worker(args, AVX2_CAP, scratch / "capped.json", scratch / "reference.npy")
    result = {"run": str(run.path), "machine": environment(args.threads) | {"cpu_isa": native["isa"]["cpu_isa"]},
              "threads": args.threads, "rounds": args.rounds, "iters": args.iters, "validation_images": len(images),
              "reference_miou": native["reference_miou"], "graphs": {k: v[0] for k, v in GRAPHS.items()},
              "sidecars": {name: fileio.read_json(RunDir(run.path.with_name(f"{run.path.name}-int8-{name}"))
                                                  .onnx_sidecar("int8"))["int8"] for name in GRAPHS},
              "native": native, "avx2_cap": capped, "load_average_1min_at_start": load_start,
              "load_average_1min_at_end": os.getloadavg()[0], "history": (run.path / "history.csv").read_text()}
    fileio.write_json(out, result)
    fileio.write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
