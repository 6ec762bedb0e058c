"""TorchScript vs dynamo (torch.export) ONNX exporter, per model family (issue 22, section 4). Not a test:
it measures and writes benchmarks/results/exporters.json and .md, whatever the numbers are.

For every family NAME it expects two run directories with the same checkpoint, RUNS/NAME-ts exported with
`--exporter torchscript` and RUNS/NAME-dyn with `--exporter dynamo` (both `--precision fp32,fp16,int8`) and
parity.json of `parity --backends onnxruntime,openvino --precision fp32,fp16,int8` in each, e.g.

    segdeploy train --dataset synthetic --encoder-weights none --max-images 16 --epochs 1 --max-steps 2 \\
        --batch-size 4 --device cpu --size 64 --model deeplabv3plus --encoder resnet18 --output RUNS/dlv3p-ts
    (copy config.toml, history.csv and checkpoints/ to RUNS/dlv3p-dyn)
    segdeploy export RUNS/dlv3p-ts --exporter torchscript --precision fp32,fp16,int8 --calib-images 8  (-dyn: dynamo)
    segdeploy parity RUNS/dlv3p-ts --backends onnxruntime,openvino --precision fp32,fp16,int8
    python benchmarks/exporters.py RUNS --families unet,dlv3p,dlv3,sam2

It records per graph the op counts, node count, opset and file size, the parity rows, and the fp32 latency
on ONNX Runtime and OpenVINO (CPU, batch 1 and 4), the two exporters' graphs timed in interleaved rounds.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segdeploy.bench.timing import HostTimer, latency_summary  # noqa: E402
from segdeploy.core import fileio  # noqa: E402
from segdeploy.core.env import environment  # noqa: E402
from segdeploy.core.rundir import RunDir  # noqa: E402

EXPORTERS = {"ts": "torchscript", "dyn": "dynamo"}


def graph_facts(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(node.op_type for node in model.graph.node)
    return {"nodes": len(model.graph.node), "ops": dict(sorted(ops.items())), "size_mb": path.stat().st_size / 2**20,
            "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))}


def latencies(runs: dict[str, RunDir], backend: str, batch: int, rounds: int, threads: int) -> dict:
    from segdeploy.runtime.variants import load_runner

    size = next(iter(runs.values())).load_config().data.size
    images = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    runners = {key: load_runner(backend, run, "fp32", threads=threads) for key, run in runs.items()}
    timer, times = HostTimer(), {key: [] for key in runners}
    for runner in runners.values():
        for _ in range(3):
            runner.infer(images)
    for i in range(rounds):
        for key in (list(runners) if i % 2 == 0 else list(reversed(runners))):
            times[key].append(timer.measure(lambda: runners[key].infer(images), lambda: None))
    for runner in runners.values():
        runner.close()
    return {EXPORTERS[key]: latency_summary(np.array(values)) for key, values in times.items()}


def family(root: Path, name: str, rounds: int, threads: int) -> dict:
    runs = {key: RunDir(root / f"{name}-{key}") for key in EXPORTERS}
    result = {"family": name, "model": runs["ts"].load_config().model.name, "graphs": {}, "parity": {}, "latency_ms": {}}
    for key, run in runs.items():
        exporter = EXPORTERS[key]
        assert fileio.read_json(run.onnx_sidecar("fp32"))["exporter"] == exporter, run.path
        result["graphs"][exporter] = {p: graph_facts(run.onnx_path(p)) for p in ("fp32", "fp16", "int8")
                                      if run.onnx_path(p).is_file()}
        parity = run.read_parity() or {}
        result["parity"][exporter] = [{k: r.get(k) for k in ("variant", "precision", "status", "max_abs_err",
                                                             "argmax_agreement", "miou_delta", "passed")}
                                      for r in parity.get("results", [])]
        result["parity"][exporter] += [{"variant": f"feature {f['output']}", "max_rel_err": f["max_rel_err"],
                                        "passed": f["passed"]} for f in parity.get("feature_parity", [])]
    for backend in ("onnxruntime", "openvino"):
        for batch in (1, 4):
            result["latency_ms"][f"{backend} b{batch}"] = latencies(runs, backend, batch, rounds, threads)
    return result


def markdown(report: dict) -> str:
    lines = ["# TorchScript vs dynamo ONNX exporter", "",
             f"CPU: {report['environment'].get('cpu')}, {report['threads']} threads, machine shared with other work "
             f"(load average at start {report['load_average_at_start'][0]:.1f}). Tiny models (64 px, 2 training steps "
             "on synthetic data); latency p50 of interleaved rounds, fp32 graphs.", "",
             "| family | exporter | fp32 nodes | opset | MB | ops that differ | ORT b1 ms | ORT b4 ms | OV b1 ms | OV b4 ms |",
             "|" + "---|" * 10]
    for f in report["families"]:
        ops = {e: f["graphs"][e]["fp32"]["ops"] for e in f["graphs"]}
        differ = sorted(k for k in set().union(*ops.values()) if len({o.get(k, 0) for o in ops.values()}) > 1)
        for exporter, graphs in f["graphs"].items():
            g = graphs["fp32"]
            lat = [f["latency_ms"][k][exporter]["p50"] for k in ("onnxruntime b1", "onnxruntime b4", "openvino b1",
                                                                 "openvino b4")]
            shown = ", ".join(f"{k} {ops[exporter].get(k, 0)}" for k in differ) or "none"
            lines.append(f"| {f['family']} | {exporter} | {g['nodes']} | {g['opset']} | {g['size_mb']:.1f} | {shown} | "
                         + " | ".join(f"{v:.2f}" for v in lat) + " |")
    lines += ["", "Parity against torch fp32 (agreement %, max |logit err|):", "",
              "| family | variant | precision | torchscript | dynamo |", "|---|---|---|---|---|"]
    for f in report["families"]:
        rows = {e: {(r["variant"], r.get("precision")): r for r in f["parity"][e]} for e in f["parity"]}
        for key in rows.get("torchscript", {}):
            cells = []
            for exporter in ("torchscript", "dynamo"):
                r = rows.get(exporter, {}).get(key, {})
                if r.get("argmax_agreement") is not None:
                    cells.append(f"{100 * r['argmax_agreement']:.3f}%, {r['max_abs_err']:.1e}")
                else:
                    cells.append(f"rel {r.get('max_rel_err', float('nan')):.1e}" if "max_rel_err" in r else r.get("status", "-"))
            lines.append(f"| {f['family']} | {key[0]} | {key[1] or ''} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--families", default="unet,dlv3p,dlv3,sam2")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "exporters.json")
    args = parser.parse_args()
    report = {"benchmark": "exporters", "threads": args.threads, "load_average_at_start": os.getloadavg(),
              "environment": environment(args.threads), "families": []}
    started = time.time()
    for name in args.families.split(","):
        if (args.runs / f"{name}-dyn" / "parity.json").is_file():
            report["families"].append(family(args.runs, name, args.rounds, args.threads))
            print(f"{name}: {report['families'][-1]['latency_ms']}", flush=True)
    report["load_average_at_end"], report["seconds"] = os.getloadavg(), time.time() - started
    fileio.write_json(args.output, report)
    fileio.write_text(args.output.with_suffix(".md"), markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
