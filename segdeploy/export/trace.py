"""The model to one ONNX file: torch.onnx.export (torch.export-based "dynamo" or "torchscript") with a dynamic
batch axis, constant folding with onnxslim, and the checker; `export.onnx` turns runs into graphs with these."""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from pathlib import Path
from typing import Iterator

import torch

from segdeploy.core import fileio
from segdeploy.core.errors import ConfigError, SegdeployError, first_line
from segdeploy.core.size import input_hw

EXPORTERS = ("torchscript", "dynamo")


def export_onnx(model: torch.nn.Module, path: Path, size: int | list[int], opset: int = 17,
                exporter: str = "torchscript", example_batch: int = 2,
                output_names: tuple[str, ...] = ("logits",)) -> None:
    """Export with a dynamic batch axis and static H, W: input `images` [N,3,H,W] -> output `logits` [N,C,H,W]
    (a module returning several tensors: one output name each, all batch-first)."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown exporter {exporter!r} (known: {', '.join(EXPORTERS)})")
    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        raise SegdeployError("the dynamo exporter (torch.export) needs onnxscript: pip install onnxscript, "
                             "or export with --exporter torchscript")
    example = torch.randn(example_batch, 3, *input_hw(size))
    with fileio.atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=list(output_names),
                              dynamic_axes={name: {0: "batch"} for name in ("images", *output_names)},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        else:
            batch = torch.export.Dim("batch", min=1, max=1024)
            with _out_of_place_activations(model):
                program = torch.onnx.export(model, (example,), input_names=["images"], output_names=list(output_names),
                                            dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True,
                                            external_data=False, verbose=False)
            program.save(str(tmp))
        check_onnx(tmp)


@contextlib.contextmanager
def _out_of_place_activations(model: torch.nn.Module) -> Iterator[None]:
    """Activations built with inplace=True (smp's and timm's ReLU, ReLU6, Hardswish, SiLU) computed out of place
    while torch.export traces: the same ONNX ops and values, without its slow decomposition of in-place ops
    (U-Net MobileNet v2 at 32 px on an idle 2-core AVX2 CPU: 9.1-13.3 s instead of 13.5-16.1 s). The modules
    get their setting back afterwards."""
    switched = [module for module in model.modules() if getattr(module, "inplace", None) is True]
    for module in switched:
        module.inplace = False
    try:
        yield
    finally:
        for module in switched:
            module.inplace = True


def max_opset(exporter: str) -> int:
    from torch.onnx import _constants

    if exporter == "torchscript":
        return getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
    return getattr(_constants, "ONNX_MAX_OPSET", 20)


def graph_opset(path: Path) -> int:
    """The default-domain opset the graph file declares (what the exporter wrote, not what was asked)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


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
        raise SegdeployError(f"ONNX file {path} is invalid or truncated: {first_line(exc)}") from None
