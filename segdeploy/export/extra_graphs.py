"""A family's extra graphs (SAM2's vision_features.onnx) and model.onnx from ONE export: the model is exported
with every extra graph's output beside `logits`, constants are folded once, and each graph is that export cut
down to its own output (onnx.utils.Extractor). The encoder is traced and folded once instead of once per
graph: for SAM2 Hiera-T the second trace and fold were ~40% of `segdeploy export`'s time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segdeploy.core import fileio
from segdeploy.core.config import ExportConfig
from segdeploy.core.unit import FileUnit
from segdeploy.export.trace import check_onnx, export_onnx, fold_constants
from segdeploy.models.registry import ModelSpec


def export_with_extra_graphs(model: torch.nn.Module, spec: ModelSpec, unit: FileUnit, path: Path,
                             size: int | list[int], cfg: ExportConfig) -> dict:
    """model.onnx at `path` and each extra graph beside it, staged in `unit`; what was done, for the sidecar."""
    extras = spec.extra_graphs(model)
    outputs = {name: output for name, (_, output) in extras.items()}
    combined = unit.scratch(path)
    export_onnx(spec.with_extra_outputs(model).eval(), combined, size, opset=cfg.opset, exporter=cfg.exporter,
                output_names=("logits", *outputs.values()))
    if spec.fold_constants:
        info = {"simplify": {"simplified": True, "reason": "constants folded (onnxslim)"},
                "constant_folding": fold_constants(combined)}
    else:
        info = {"simplify": {"simplified": False, "reason": "a graph cut from the export with the extra outputs"}}
    import onnx

    graph = onnx.load(str(combined))
    keep_outputs(graph, unit.path(path), ["logits"])
    for name, output in outputs.items():
        extra = unit.path(path.with_name(f"{name}.onnx"))
        keep_outputs(graph, extra, [output])
        info.setdefault("extra_graphs", {})[name] = {
            "file": f"{name}.onnx", "output": output, "sha256": fileio.sha256_file(extra),
            "cut_from": "the export of model.onnx (one trace, outputs logits + " + ", ".join(outputs.values()) + ")"}
    return info


def keep_outputs(model: Any, target: Path, outputs: list[str]) -> None:
    """The ONNX `model` cut down to the nodes and weights `outputs` need, written to `target` (checked)."""
    import onnx
    from onnx.utils import Extractor

    cut = Extractor(model).extract_model([value.name for value in model.graph.input], outputs)
    cut.producer_name, cut.producer_version = model.producer_name, model.producer_version
    with fileio.atomic_path(target) as tmp:
        onnx.save(cut, str(tmp))
        check_onnx(tmp)
