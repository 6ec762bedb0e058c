"""Which decoder makes an efficient encoder cheap to run at 128 px (issue 23's latency target), and what do the
encoders cost under the same slim decoder?

Builds each candidate with random weights (latency does not depend on the values), exports it with
export_onnx's default, the torchscript exporter at opset 17 (a screen: `segdeploy export` writes the dynamo graph
and slims it; the side-by-side timed that one), and times batch 1 FP32 on OpenVINO and ONNX Runtime, interleaved round
by round with any reference graph given (e.g. Ultralytics' yolo26n-sem export from the side-by-side run), so
every row saw the same machine load. Params and GFLOPs as `segdeploy models` counts them.

    python benchmarks/decoder_latency.py --reference /work/ulwork/run-avx2/ultralytics/ultralytics_export.onnx \
        --out benchmarks/results/decoder_latency_avx2.json
    # the encoders under the same slim decoder (a screen, quoted in studies/results/kvasir_efficient/README.md)
    python benchmarks/decoder_latency.py --candidates "unet w0.25" "unet mnv4m w0.25" "unet r18 w0.25" \
        "unet r18 w0.5" "unet r18 w1" "unet effb0 w0.25" "unet mnv2 w0.25" --out /tmp/encoder_latency.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

MNV4S, MNV4M = "tu-mobilenetv4_conv_small", "tu-mobilenetv4_conv_medium"
# name -> (model, encoder, decoder width)
CANDIDATES = {
    "unet w0.25": ("unet", MNV4S, 0.25),
    "unet w0.125": ("unet", MNV4S, 0.125),
    "fpn w0.125": ("fpn", MNV4S, 0.125),
    "fpn w0.25": ("fpn", MNV4S, 0.25),
    "fpn w0.5": ("fpn", MNV4S, 0.5),
    "fpn w1": ("fpn", MNV4S, 1.0),
    "segformer w0.25": ("segformer", MNV4S, 0.25),
    "segformer w0.5": ("segformer", MNV4S, 0.5),
    "unet mnv4m w0.25": ("unet", MNV4M, 0.25),
    "unet r18 w0.25": ("unet", "resnet18", 0.25),
    "unet r18 w0.5": ("unet", "resnet18", 0.5),
    "unet r18 w1": ("unet", "resnet18", 1.0),
    "unet effb0 w0.25": ("unet", "efficientnet-b0", 0.25),
    "unet mnv2 w0.25": ("unet", "mobilenet_v2", 0.25),
}


def export_candidates(names: list[str], folder: Path, size: int) -> dict[str, dict]:
    import torch

    from segdeploy.core.config import ModelConfig
    from segdeploy.export.onnx import export_onnx
    from segdeploy.models.registry import build_model
    from segdeploy.models.zoo import model_cost

    rows = {}
    for name in names:
        model_name, encoder, width = CANDIDATES[name]
        cfg = ModelConfig(name=model_name, encoder=encoder, encoder_weights="none", decoder_width=width)
        torch.manual_seed(0)
        model = build_model(cfg, 2, size).eval()
        path = folder / f"{name.replace(' ', '_')}.onnx"
        export_onnx(model, path, size)
        cost = model_cost(cfg, size)
        rows[name] = {"model": model_name, "encoder": encoder, "decoder_width": width, "params": cost.params,
                      "gflops": cost.gflops, "onnx": path}
    return rows


def measure(graphs: dict[str, Path], size: int, threads: int, rounds: int, repeats: int) -> dict[str, dict]:
    """Median and min ms per (graph, backend), rounds interleaved across every graph (ultralytics_sbs_eval's
    runners and timing loop)."""
    from ultralytics_sbs_eval import _compiled, _ort, interleaved

    calls = {}
    for name, path in graphs.items():
        calls[(name, "openvino")], calls[(name, "onnxruntime")] = _compiled(path, threads), _ort(path, threads)
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    out: dict[str, dict] = {}
    for (name, backend), stats in interleaved(calls, x, rounds, repeats).items():
        out.setdefault(name, {})[backend] = stats
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--reference", type=Path, help="an ONNX graph timed alongside (batch 1, 3 x size x size)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from segdeploy.core.env import cpu_flags, cpu_model

    with tempfile.TemporaryDirectory() as tmp:
        rows = export_candidates(args.candidates, Path(tmp), args.size)
        graphs = {name: row.pop("onnx") for name, row in rows.items()}
        if args.reference:
            graphs["reference"] = args.reference
            rows["reference"] = {"onnx": str(args.reference)}
        for name, timing in measure(graphs, args.size, args.threads, args.rounds, args.repeats).items():
            rows[name].update(timing)
    result = {"size": args.size, "batch": 1, "threads": args.threads, "precision": "fp32",
              "cpu": {"model": cpu_model(), **(cpu_flags() or {})}, "rows": rows}
    args.out.write_text(json.dumps(result, indent=2))
    for name, row in rows.items():
        cost = f"{row['params'] / 1e6:5.2f} M {row['gflops']:.3f} GFLOPs" if "params" in row else " " * 22
        print(f"{name:18s} {cost}  OV {row['openvino']['median_ms']:.2f}/{row['openvino']['min_ms']:.2f}  "
              f"ORT {row['onnxruntime']['median_ms']:.2f}/{row['onnxruntime']['min_ms']:.2f} ms")


if __name__ == "__main__":
    main()
