"""One scorer, one latency harness and the report for benchmarks/ultralytics_side_by_side.py (issue 23). Runs
in the project's venv; it imports no ultralytics (the Ultralytics graphs are exported by the child script
under the separate venv).

Scoring: both ONNX graphs through OpenVINO FP32 (CPU), batch 1, each with its own tool's preprocessing:
segdeploy = bilinear resize to 128x128, ImageNet mean/std (data.preprocess); Ultralytics = its predictor's
LetterBox (aspect kept, cv2 INTER_LINEAR as in its training loader, 114 grey padding, centred), RGB / 255. Ultralytics' logits (1/8 size) are
upsampled bilinear to the 128 input as its head does, the padding is cropped and the rest resized bilinear
to 128x128 (what its scale_masks does), so both tools give 128x128 logits of the stretched image. mIoU at 128:
argmax vs the GT mask resized nearest to 128x128; at the original size: those logits resized bilinear to the
image's size, argmax, vs the original mask. Both over one confusion matrix of all 120 val images
(data.metrics, as `segdeploy eval` does).

    python benchmarks/ultralytics_sbs_eval.py score|latency|report --out RUN [--data SPLIT_DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def graphs(out: Path) -> dict[str, dict[str, Path]]:
    """The ONNX files per tool: `score` (logits) and `latency` (what each tool deploys)."""
    sd = out / "segdeploy" / "run" / "export" / "model.onnx"
    return {"segdeploy": {"score": sd, "latency": sd},
            "ultralytics": {"score": out / "ultralytics" / "logits.onnx",
                            "latency": out / "ultralytics" / "ultralytics_export.onnx"}}


def export_all(out: Path, venv: Path) -> None:
    """segdeploy export (project venv) and the child's export (separate venv), each only when missing."""
    files = graphs(out)
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    if not files["segdeploy"]["score"].is_file():
        subprocess.run([sys.executable, "-m", "segdeploy", "export", str(out / "segdeploy" / "run")], check=True,
                       cwd=ROOT, env=env)
    if not files["ultralytics"]["score"].is_file():
        subprocess.run([str(venv / "bin" / "python"), str(ROOT / "benchmarks" / "ultralytics_sbs_child.py"),
                        "export", str(out / "ultralytics")], check=True, env=env)


def letterbox(image: np.ndarray, size: int = 128) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Ultralytics' LetterBox(scaleup=False, centred, grey 114): the padded image and (top, left, h, w) kept.
    Its cv2 INTER_LINEAR resize (no antialiasing) is done as torch bilinear without antialiasing (cv2 is not
    in the project's venv), the same sampling up to rounding."""
    h, w = image.shape[:2]
    r = min(size / h, size / w, 1.0)
    nh, nw = int(round(h * r)), int(round(w * r))
    if (nh, nw) != (h, w):
        chw = np.ascontiguousarray(image.transpose(2, 0, 1), np.float32)
        image = np.clip(np.rint(_resize_logits(chw, (nh, nw))), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    dh, dw = (size - nh) / 2, (size - nw) / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    padded = np.pad(image, ((top, bottom), (left, right), (0, 0)), constant_values=114)
    return padded, (top, left, nh, nw)


def _resize_logits(logits: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """C x h x w float -> C x H x W, bilinear, align_corners=False (torch's, as Ultralytics' head uses)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(logits, np.float32))[None]
    return torch.nn.functional.interpolate(x, size=hw, mode="bilinear", align_corners=False)[0].numpy()


def logits_128(tool: str, infer, image: np.ndarray) -> np.ndarray:
    """C x 128 x 128 logits of the stretched image, each tool with its own preprocessing."""
    from segdeploy.data.preprocess import normalize, resize_image

    if tool == "segdeploy":
        return infer(normalize(resize_image(image, 128))[None])[0]
    padded, (top, left, nh, nw) = letterbox(image)
    x = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], np.float32) / 255.0
    full = _resize_logits(infer(x)[0], (128, 128))
    return _resize_logits(np.ascontiguousarray(full[:, top:top + nh, left:left + nw]), (128, 128))


def _compiled(path: Path, threads: int):
    import openvino as ov

    core = ov.Core()
    model = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                  "INFERENCE_PRECISION_HINT": "f32"})
    return lambda x: np.asarray(model(x)[0])


def score(data: Path, out: Path) -> dict:
    """mIoU at 128 and at the original sizes, both tools, over the val list `split` wrote."""
    from PIL import Image

    from segdeploy.data.metrics import confusion_matrix, per_class_metrics
    from segdeploy.data.preprocess import resize_mask

    stems = (data / "val.txt").read_text().split()
    results = {}
    for tool, files in graphs(out).items():
        infer = _compiled(files["score"], 2)
        cm128, cm_orig = np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64)
        for stem in stems:
            image = np.asarray(Image.open(data / "images" / "val" / f"{stem}.jpg").convert("RGB"))
            truth = np.asarray(Image.open(data / "masks" / "val" / f"{stem}.png"))
            logits = logits_128(tool, infer, image)
            cm128 += confusion_matrix(resize_mask(truth, 128), logits.argmax(0), 2)
            cm_orig += confusion_matrix(truth, _resize_logits(logits, truth.shape).argmax(0), 2)
        if tool == "ultralytics":
            results["ultralytics_export_agreement"] = export_agreement(data, stems, files)
        results[tool] = {"images": len(stems),
                         "miou_128": float(np.mean(per_class_metrics(cm128)["iou"])),
                         "miou_original": float(np.mean(per_class_metrics(cm_orig)["iou"])),
                         "iou_128": per_class_metrics(cm128)["iou"].tolist()}
    (out / "score.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


def export_agreement(data: Path, stems: list[str], files: dict[str, Path]) -> float:
    """Pixel agreement at the 128 letterboxed input between the scorer's logits graph (upsampled, argmax) and
    Ultralytics' own export (argmax in the graph): checks that the two graphs are the same model."""
    from PIL import Image

    logits, exported = _compiled(files["score"], 2), _compiled(files["latency"], 2)
    same = total = 0
    for stem in stems:
        padded, _ = letterbox(np.asarray(Image.open(data / "images" / "val" / f"{stem}.jpg").convert("RGB")))
        x = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], np.float32) / 255.0
        ours = _resize_logits(logits(x)[0], (128, 128)).argmax(0)
        same += int((ours == exported(x)[0]).sum())
        total += ours.size
    return same / total


def _ort(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def interleaved(runners: dict, x: np.ndarray, rounds: int, repeats: int) -> dict:
    """Median and min ms of all timed calls per runner: 10 warm-up calls each, then `rounds` rounds in which
    every runner makes `repeats` calls in turn, so all of them see the same machine load."""
    times = {key: [] for key in runners}
    for run in runners.values():
        for _ in range(10):
            run(x)
    for _ in range(rounds):
        for key, run in runners.items():
            for _ in range(repeats):
                start = time.perf_counter()
                run(x)
                times[key].append((time.perf_counter() - start) * 1e3)
    return {key: {"median_ms": statistics.median(t), "min_ms": min(t), "calls": len(t)} for key, t in times.items()}


def latency(out: Path, rounds: int, repeats: int, threads: int = 2) -> dict:
    """Batch 1, `threads` threads, FP32: OpenVINO and ONNX Runtime for both tools' deployed graphs,
    interleaved round by round; median and min of all timed calls."""
    runners = {}
    for tool, files in graphs(out).items():
        runners[(tool, "openvino")] = _compiled(files["latency"], threads)
        runners[(tool, "onnxruntime")] = _ort(files["latency"], threads)
    x = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    results = {f"{tool}/{backend}": stats for (tool, backend), stats in interleaved(runners, x, rounds, repeats).items()}
    (out / "latency.json").write_text(json.dumps({"threads": threads, "batch": 1, **results}, indent=2))
    print(json.dumps(results, indent=2))
    return results


def cpu_facts() -> dict:
    """The CPU as segdeploy's environment block reads it (core.isa flags, model, logical CPUs)."""
    import os

    from segdeploy.core.env import cpu_flags, cpu_model

    return {"model": cpu_model(), "logical_cpus": os.cpu_count(), **(cpu_flags() or {})}


def segdeploy_training(out: Path) -> dict:
    """Model, params, GFLOPs at 128 (models.zoo.model_cost), epochs and s/epoch (history.csv) of the run."""
    import csv

    from segdeploy.core.config import load_config
    from segdeploy.models.zoo import model_cost

    run = out / "segdeploy" / "run"
    cfg = load_config(run / "config.toml")
    rows = list(csv.DictReader((run / "history.csv").open()))
    seconds = sum(float(row["seconds"]) for row in rows)
    cost = model_cost(cfg.model, 128)
    return {"tool": "segdeploy", "model": f"{cfg.model.name} {cfg.model.encoder} (random init)",
            "params": cost.params, "gflops_at_128": cost.gflops, "epochs": len(rows), "train_s": seconds,
            "s_per_epoch": seconds / len(rows) if rows else None, "amp": cfg.train.amp,
            "augment": cfg.data.augment, "loss": cfg.train.loss, "optimizer": cfg.train.optimizer}


def _versions(venv: Path) -> dict:
    import importlib.metadata as md

    code = "import importlib.metadata as m; print(m.version('ultralytics'))"
    ul = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    names = ("segdeploy", "torch", "openvino", "onnxruntime", "segmentation-models-pytorch")
    return {"python": platform.python_version(), "ultralytics": ul.stdout.strip() or ul.stderr.strip()[-200:],
            **{name: _version(md, name) for name in names}}


def _version(md, name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _row(name: str, train: dict, scored: dict, lat: dict) -> str:
    def num(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    ov, ort = lat.get(f"{name}/openvino", {}), lat.get(f"{name}/onnxruntime", {})
    return (f"| {name}, {train.get('model')} | {num(train.get('params', 0) / 1e6, '.2f')} M "
            f"| {num(train.get('gflops_at_128'), '.3f')} | {train.get('epochs')} "
            f"| {num(train.get('s_per_epoch'), '.1f')} "
            f"| {num(100 * scored.get('miou_128', float('nan')), '.1f')}% "
            f"| {num(100 * scored.get('miou_original', float('nan')), '.1f')}% "
            f"| {num(ov.get('median_ms'), '.2f')} / {num(ov.get('min_ms'), '.2f')} "
            f"| {num(ort.get('median_ms'), '.2f')} / {num(ort.get('min_ms'), '.2f')} |")


def report(out: Path, venv: Path, results: Path) -> dict:
    """benchmarks/results/ultralytics_side_by_side.{json,md} from OUT's train/score/latency files."""
    def read(path: Path) -> dict:
        return json.loads(path.read_text()) if path.is_file() else {}

    training = {"segdeploy": segdeploy_training(out), "ultralytics": read(out / "ultralytics" / "train.json")}
    walls = {tool: read(out / tool / "wall.json") for tool in training}
    record = {"training": training, "walls": walls, "score": read(out / "score.json"),
              "latency": read(out / "latency.json"), "cpu": cpu_facts(), "versions": _versions(venv),
              "conditions": CONDITIONS}
    results.mkdir(parents=True, exist_ok=True)
    (results / "ultralytics_side_by_side.json").write_text(json.dumps(record, indent=2))
    header = ("| tool, model | params | GFLOPs at 128 | epochs | s/epoch | mIoU at 128 | mIoU at original size "
              "| OpenVINO FP32 ms (median / min) | ONNX Runtime FP32 ms (median / min) |\n|---|---:|---:|---:|---:|"
              "---:|---:|---:|---:|")
    rows = [_row(tool, training[tool], record["score"].get(tool, {}), record["latency"]) for tool in training]
    cpu = ", ".join(f"{k}={v}" for k, v in record["cpu"].items())
    text = "\n".join(["# segdeploy vs Ultralytics semantic on Kvasir-SEG (issue 23)", "", header, *rows, "",
                      f"CPU: {cpu}", "", f"Versions: {json.dumps(record['versions'])}", "", CONDITIONS, ""])
    (results / "ultralytics_side_by_side.md").write_text(text)
    print(text)
    return record


CONDITIONS = ("Both trainers started together (benchmarks/ultralytics_side_by_side.py run), one thread each "
              "(OMP/MKL=1, torch.set_num_threads(1)), the same wall-clock budget, 128 px, batch 16, workers 0, "
              "random init, segdeploy's seeded 880/120 Kvasir-SEG split. s/epoch = training seconds (validation "
              "included) / epochs. mIoU: one scorer, OpenVINO FP32, each tool's own preprocessing (segdeploy "
              "resize, Ultralytics letterbox), one confusion matrix over the 120 val images. Latency: batch 1, "
              "2 threads, FP32, the graph each tool exports (Ultralytics': argmax in the graph; segdeploy's: "
              "logits), interleaved rounds, median and min of all calls.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("score", "latency", "report"))
    parser.add_argument("--out", type=Path, required=True, help="the run folder of ultralytics_side_by_side.py run")
    parser.add_argument("--data", type=Path, help="the split folder (score)")
    parser.add_argument("--venv", type=Path, default=Path("/work/ulvenv"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.command == "score":
        if args.data is None:
            parser.error("score needs --data (the folder `split` wrote)")
        export_all(args.out, args.venv)
        score(args.data, args.out)
    elif args.command == "latency":
        export_all(args.out, args.venv)
        latency(args.out, args.rounds, args.repeats)
    else:
        report(args.out, args.venv, args.results)


if __name__ == "__main__":
    main()
