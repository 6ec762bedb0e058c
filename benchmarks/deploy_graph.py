"""What the deploy graph saves on a CPU (issue 22, section 2). Not a test: it measures and writes
benchmarks/results/deploy_graph.json and .md, whatever the numbers are.

    python benchmarks/deploy_graph.py --threads 2

End to end on the host, uint8 N x H x W x 3 batch in -> uint8 N x H x W mask out, through segdeploy's own
runners (`load_runner`, `infer_images`, `predicted_labels`):
- plain graph: the shared `normalize()` (uint8 NHWC -> float32 NCHW), the graph, numpy argmax over classes
  and the cast to uint8, all inside the timed region;
- deploy graph (`export --deploy`): the uint8 batch into the graph, the mask out.
Both on ONNX Runtime and OpenVINO (CPU), in interleaved rounds (plain, deploy, deploy, plain, ...) so a burst
of load from other work on the machine hits both; the host-side pieces of the plain path (normalize, argmax)
are timed alone in the same rounds. Models: random-init U-Net R18, 2 classes, 128 px, and DeepLabV3+ R18,
21 classes, 512 x 512, each trained for a few steps on synthetic data (the weights do not change the cost).
It also records `segdeploy bench` rows of the plain and deploy graphs with and without --include-transfer
for the 128 px model (the bench cell's own protocol: prepare once outside the timed region, or not).
"""

from __future__ import annotations

import argparse
import os
import subprocess
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

MODELS = {  # name -> (train flags, precisions, batch sizes, rounds)
    "unet-r18-2cls-128": (["--model", "unet", "--encoder", "resnet18", "--num-classes", "2", "--size", "128"],
                          ["fp32", "int8"], [1, 8], 30),
    "deeplabv3plus-r18-21cls-512": (["--model", "deeplabv3plus", "--encoder", "resnet18", "--num-classes", "21",
                                     "--size", "512"], ["fp32"], [1, 4], 8),
}
BACKENDS = ("onnxruntime", "openvino")


def segdeploy(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    subprocess.run([sys.executable, "-m", "segdeploy", *args], check=True, env=env, stdout=subprocess.DEVNULL)


def make_run(work: Path, name: str, flags: list[str], precisions: list[str]) -> RunDir:
    run_dir = work / name
    if not (run_dir / "export" / "model.deploy.onnx").is_file():
        segdeploy("train", "--dataset", "synthetic", "--encoder-weights", "none", "--max-images", "8", "--epochs", "1",
                  "--max-steps", "2", "--batch-size", "2", "--device", "cpu", "--output", str(run_dir), "--overwrite",
                  *flags)
        segdeploy("export", str(run_dir), "--precision", ",".join(precisions), "--deploy", "--calib-images", "8")
    return RunDir(run_dir)


def end_to_end(run: RunDir, backend: str, precision: str, batch: int, rounds: int, threads: int) -> dict:
    from segdeploy.data.preprocess import normalize
    from segdeploy.runtime.base import infer_images, predicted_labels
    from segdeploy.runtime.variants import load_runner

    size = run.load_config().data.size
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    plain = load_runner(backend, run, precision, threads=threads)
    deploy = load_runner(f"{backend}+deploy", run, precision, threads=threads)
    logits = infer_images(plain, images)
    steps = {
        "plain": lambda: predicted_labels(plain, infer_images(plain, images)).astype(np.uint8),
        "deploy": lambda: infer_images(deploy, images),
        "host_normalize": lambda: normalize(images),
        "host_argmax": lambda: logits.argmax(1).astype(np.uint8),
    }
    agreement = float((steps["plain"]() == steps["deploy"]()).mean())
    timer, times = HostTimer(), {name: [] for name in steps}
    for _ in range(3):  # warm-up
        for step in steps.values():
            step()
    for i in range(rounds):
        order = list(steps) if i % 2 == 0 else list(reversed(steps))
        for name in order:
            times[name].append(timer.measure(steps[name], lambda: None))
    plain.close()
    deploy.close()
    summary = {name: latency_summary(np.array(values)) for name, values in times.items()}
    p50 = {name: s["p50"] for name, s in summary.items()}
    return {"backend": backend, "precision": precision, "batch_size": batch, "rounds": rounds,
            "mask_agreement_plain_vs_deploy": agreement, "latency_ms": summary,
            "p50_ms": p50, "deploy_saves_ms_p50": p50["plain"] - p50["deploy"],
            "deploy_saves_fraction_p50": (p50["plain"] - p50["deploy"]) / p50["plain"],
            "load_average_1min_after": os.getloadavg()[0]}


def bench_rows(run: RunDir, threads: int) -> list[dict]:
    """`segdeploy bench` rows of the plain and deploy graphs, with and without --include-transfer."""
    rows = []
    for transfer in ("--no-include-transfer", "--include-transfer"):
        segdeploy("bench", str(run.path), "--backends", "onnxruntime,onnxruntime+deploy,openvino,openvino+deploy",
                  "--precision", "fp32", "--batch-sizes", "1,8", "--iters", "20", "--threads", str(threads),
                  "--no-accuracy", transfer)
        for row in fileio.read_json(run.bench)["results"]:
            rows.append({key: row.get(key) for key in ("variant", "precision", "batch_size", "include_transfer",
                                                       "status", "input_format", "output_format")}
                        | {"p50_ms": (row.get("latency_ms") or {}).get("p50"), "throughput_ips": row.get("throughput_ips")})
    return rows


def markdown(report: dict) -> str:
    lines = ["# Deploy graph vs plain graph, end to end on the host (uint8 batch in -> uint8 mask out)", "",
             f"CPU: {report['environment'].get('cpu')}, {report['threads']} threads; machine shared with other "
             f"work (load average at start {report['load_average_at_start'][0]:.1f}). p50 of interleaved rounds.", "",
             "| model | backend | precision | batch | plain ms (normalize + graph + argmax) | deploy ms | saved ms "
             "| saved % | host normalize ms | host argmax ms | masks equal % |", "|" + "---|" * 11]
    for r in report["end_to_end"]:
        p = r["p50_ms"]
        lines.append(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['batch_size']} | {p['plain']:.2f} | "
                     f"{p['deploy']:.2f} | {r['deploy_saves_ms_p50']:+.2f} | {100 * r['deploy_saves_fraction_p50']:+.1f} "
                     f"| {p['host_normalize']:.2f} | {p['host_argmax']:.2f} | {100 * r['mask_agreement_plain_vs_deploy']:.3f} |")
    if report.get("bench_rows"):
        lines += ["", f"`segdeploy bench` rows ({report['bench_model']}, fp32; plain rows take normalised floats and "
                  "return logits, deploy rows take uint8 and return the mask):", "",
                  "| variant | batch | include transfer | p50 ms | img/s |", "|---|---|---|---|---|"]
        for r in report["bench_rows"]:
            lines.append(f"| {r['variant']} | {r['batch_size']} | {r['include_transfer']} | "
                         f"{r['p50_ms'] or float('nan'):.2f} | {r['throughput_ips'] or float('nan'):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/segdeploy-deploy-graph-bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--no-bench-rows", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "deploy_graph.json")
    args = parser.parse_args()
    started, load = time.time(), os.getloadavg()
    report = {"benchmark": "deploy_graph", "threads": args.threads, "load_average_at_start": load,
              "environment": environment(args.threads), "end_to_end": []}
    runs = {}
    for name in args.models.split(","):
        flags, precisions, batches, rounds = MODELS[name]
        runs[name] = run = make_run(args.work, name, flags, precisions)
        for precision in precisions:
            for backend in BACKENDS:
                for batch in batches:
                    row = {"model": name, "exporter": fileio.read_json(run.onnx_sidecar(precision))["exporter"],
                           **end_to_end(run, backend, precision, batch, rounds, args.threads)}
                    print(f"{name} {backend} {precision} b{batch}: plain {row['p50_ms']['plain']:.2f} ms, "
                          f"deploy {row['p50_ms']['deploy']:.2f} ms", flush=True)
                    report["end_to_end"].append(row)
    first = next(iter(runs))
    if not args.no_bench_rows:
        report["bench_model"], report["bench_rows"] = first, bench_rows(runs[first], args.threads)
    report["load_average_at_end"], report["seconds"] = os.getloadavg(), time.time() - started
    fileio.write_json(args.output, report)
    fileio.write_text(args.output.with_suffix(".md"), markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
