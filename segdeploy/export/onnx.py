"""`segdeploy export`: the trained model as an ONNX graph with a JSON sidecar."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from segdeploy import __version__

from segdeploy.core import fileio
from segdeploy.core.errors import ConfigError, SegdeployError
from segdeploy.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from segdeploy.core.rundir import RunDir, load_model

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


def export_run(run: RunDir, opset: int | None = None, exporter: str | None = None,
               precisions: list[str] | None = None, simplify: bool = True, calib_images: int = 64,
               calib_method: str = "minmax", io_fp16: bool = False, int8_activations: str = "int8") -> Path:
    """Export the best checkpoint of `run` to RUN/export/model.onnx (+ model.json sidecar).

    With `precisions` (e.g. ["fp32", "fp16", "int8"]) also writes model.fp16.onnx / model.int8.onnx,
    each derived from the (simplified) FP32 graph, each with its own sidecar. Returns the FP32 path.
    """
    return export_graphs(run, opset, exporter, precisions, simplify, calib_images, calib_method, io_fp16,
                         int8_activations)["fp32"]


def export_graphs(run: RunDir, opset: int | None = None, exporter: str | None = None,
                  precisions: list[str] | None = None, simplify: bool = True, calib_images: int = 64,
                  calib_method: str = "minmax", io_fp16: bool = False,
                  int8_activations: str = "int8") -> dict[str, Path]:
    """One ONNX graph per precision under RUN/export/; returns {precision: path} (fp32 always)."""
    from segdeploy.export.precision import (CALIB_METHODS, INT8_ACTIVATIONS, convert_fp16, quantize_int8,
                                     simplify_graph)

    precisions = list(dict.fromkeys(precisions or ["fp32"]))
    for precision in precisions:
        run.onnx_path(precision)  # unknown precision: one-line error before any work
    if calib_method not in CALIB_METHODS:
        raise ConfigError(f"unknown calibration method {calib_method!r} (known: {', '.join(CALIB_METHODS)})")
    if int8_activations not in INT8_ACTIVATIONS:
        raise ConfigError(f"unknown INT8 activation type {int8_activations!r} (known: {', '.join(INT8_ACTIVATIONS)})")
    model, cfg, class_names = load_model(run)
    opset = opset or cfg.export.opset
    exporter = exporter or cfg.export.exporter
    path = run.onnx_path("fp32")
    extra = {}
    if cfg.model.name == "sam2":
        from segdeploy.models.sam2 import export_sam2

        extra = export_sam2(model, run, cfg.data.size, opset, exporter)
        simplified = {"simplified": True, "reason": "constants folded by the SAM2 export (onnxslim)"}
    else:
        export_onnx(model, path, cfg.data.size, opset=opset, exporter=exporter)
        simplified = {"simplified": False, "reason": "disabled (--no-simplify)"}
        if simplify:
            simplified = simplify_graph(path, path)
    sidecar = {
        "file": path.name, "precision": "fp32",
        "input": {"name": "images", "shape": ["batch", 3, cfg.data.size, cfg.data.size], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", len(class_names), cfg.data.size, cfg.data.size],
                   "dtype": "float32"},
        "input_size": cfg.data.size, "class_names": class_names,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "model": cfg.model.name, "encoder": cfg.model.encoder,
        "opset": opset, "exporter": exporter, "torch_version": torch.__version__,
        "segdeploy_version": __version__, "sha256": fileio.sha256_file(path),
        "simplify": simplified, **extra,
    }
    fileio.write_json(run.onnx_sidecar("fp32"), sidecar)
    paths = {"fp32": path}
    for precision in precisions:
        if precision == "fp32":
            continue
        target = run.onnx_path(precision)
        if precision == "fp16":
            details = convert_fp16(path, target, io_fp16=io_fp16)
        else:
            from segdeploy.export.precision import calibration_images

            images, _ = calibration_images(cfg, calib_images)
            details = quantize_int8(path, target, images, method=calib_method, activations=int8_activations)
        check_onnx(target)
        io_dtype = "float16" if precision == "fp16" and io_fp16 else "float32"
        fileio.write_json(run.onnx_sidecar(precision), {
            **sidecar, "file": target.name, "precision": precision,
            "input": {**sidecar["input"], "dtype": io_dtype}, "output": {**sidecar["output"], "dtype": io_dtype},
            "sha256": fileio.sha256_file(target), "source": path.name, "source_sha256": sidecar["sha256"],
            precision: details,
        })
        paths[precision] = target
    return paths
