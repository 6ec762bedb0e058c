"""`segdeploy export`: the trained model as an ONNX graph with a JSON sidecar."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from segdeploy import __version__, fileio
from segdeploy.errors import ConfigError, SegdeployError
from segdeploy.preprocess import IMAGENET_MEAN, IMAGENET_STD
from segdeploy.rundir import RunDir, load_model

EXPORTERS = ("torchscript", "dynamo")


def export_onnx(model: torch.nn.Module, path: Path, size: int, opset: int = 17,
                exporter: str = "torchscript", example_batch: int = 2, output_name: str = "logits") -> None:
    """Export with a dynamic batch axis: input `images` [N,3,H,W] -> output `logits` [N,C,H,W]."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown exporter {exporter!r} (known: {', '.join(EXPORTERS)})")
    example = torch.randn(example_batch, 3, size, size)
    with fileio.atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=[output_name],
                              dynamic_axes={"images": {0: "batch"}, output_name: {0: "batch"}},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        else:
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.onnx.export(model, (example,), input_names=["images"], output_names=[output_name],
                                        dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True,
                                        external_data=False)
            program.save(str(tmp))
        check_onnx(tmp)


def fold_constants(path: Path) -> dict:
    """Fold constant subgraphs with onnxslim (e.g. SAM2's position-embedding Resize/Tile/If, which only
    depend on the static input size) and rewrite `path`; returns what it did for the sidecar."""
    import onnx

    try:
        import onnxslim
    except ImportError:
        raise SegdeployError("constant folding needs onnxslim: pip install onnxslim") from None
    model = onnx.load(str(path))
    before = len(model.graph.node)
    model = onnxslim.slim(model)
    with fileio.atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        check_onnx(tmp)
    return {"tool": "onnxslim", "version": onnxslim.__version__, "nodes_before": before,
            "nodes_after": len(model.graph.node)}


def check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker and protobuf raise different types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SegdeployError(f"ONNX file {path} is invalid or truncated: {first}") from None


def export_run(run: RunDir, opset: int | None = None, exporter: str | None = None) -> Path:
    """Export the best checkpoint of `run` to RUN/export/model.onnx (+ model.json sidecar)."""
    model, cfg, class_names = load_model(run)
    opset = opset or cfg.export.opset
    exporter = exporter or cfg.export.exporter
    path = run.onnx_path("fp32")
    extra = {}
    if cfg.model.name == "sam2":
        from segdeploy.sam2_model import export_sam2

        extra = export_sam2(model, run, cfg.data.size, opset, exporter)
    else:
        export_onnx(model, path, cfg.data.size, opset=opset, exporter=exporter)
    fileio.write_json(run.onnx_sidecar("fp32"), {
        "file": path.name, "precision": "fp32",
        "input": {"name": "images", "shape": ["batch", 3, cfg.data.size, cfg.data.size], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", len(class_names), cfg.data.size, cfg.data.size],
                   "dtype": "float32"},
        "input_size": cfg.data.size, "class_names": class_names,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "model": cfg.model.name, "encoder": cfg.model.encoder,
        "opset": opset, "exporter": exporter, "torch_version": torch.__version__,
        "segdeploy_version": __version__, "sha256": fileio.sha256_file(path), **extra,
    })
    return path
