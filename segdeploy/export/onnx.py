"""`segdeploy export`: the trained model as an ONNX graph with a JSON sidecar."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from segdeploy import __version__

from segdeploy.core import fileio
from segdeploy.core.config import Config, ExportConfig
from segdeploy.core.errors import ConfigError
from segdeploy.core.rundir import RunDir
from segdeploy.core.size import input_hw
from segdeploy.core.unit import FileUnit
from segdeploy.core.validate import validate_section
from segdeploy.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, VOID_LABEL
from segdeploy.export.trace import (EXPORTERS, check_onnx, export_onnx, fold_constants,  # noqa: F401 (the API)
                                    graph_opset, max_opset)
from segdeploy.models.checkpoint import load_model
from segdeploy.models.registry import MODELS, ModelSpec


def export_run(run: RunDir, cfg: ExportConfig | None = None) -> Path:
    """Export the best checkpoint of `run` to RUN/export/model.onnx (+ model.json sidecar); returns its path.

    With `cfg.precisions` (e.g. ["fp32", "fp16", "int8"]) also writes model.fp16.onnx / model.int8.onnx,
    each derived from the (simplified) FP32 graph, each with its own sidecar.
    """
    return export_graphs(run, cfg)["fp32"]


def _export_fp32(model: torch.nn.Module, spec: ModelSpec, unit: FileUnit, path: Path, size: int | list[int],
                 cfg: ExportConfig) -> dict:
    """model.onnx and the family's extra graphs (e.g. SAM2's vision_features.onnx), staged in `unit`;
    what was done, for the sidecar."""
    from segdeploy.export.precision import simplify_graph

    if cfg.opset < spec.min_opset:
        raise ConfigError(f"this model family needs opset >= {spec.min_opset}, got {cfg.opset}")
    if cfg.opset > max_opset(cfg.exporter):
        raise ConfigError(f"export.opset {cfg.opset} is above the highest opset the {cfg.exporter} exporter "
                          f"writes ({max_opset(cfg.exporter)})")
    if spec.extra_graphs:
        from segdeploy.export.extra_graphs import export_with_extra_graphs

        return export_with_extra_graphs(model, spec, unit, path, size, cfg)
    staged = unit.path(path)
    if spec.fold_constants:  # graphs the checked simplification cannot trace (SAM2's position embeddings)
        export_onnx(model, staged, size, opset=cfg.opset, exporter=cfg.exporter)
        return {"simplify": {"simplified": True, "reason": "constants folded (onnxslim)"},
                "constant_folding": fold_constants(staged)}
    if cfg.simplify:  # the raw graph apart, so the check compares the slimmed graph with it, not with itself
        raw = unit.scratch(path)
        export_onnx(model, raw, size, opset=cfg.opset, exporter=cfg.exporter)
        return {"simplify": simplify_graph(raw, staged)}
    export_onnx(model, staged, size, opset=cfg.opset, exporter=cfg.exporter)
    return {"simplify": {"simplified": False, "reason": "disabled (--no-simplify)"}}


def export_graphs(run: RunDir, cfg: ExportConfig | None = None) -> dict[str, Path]:
    """One ONNX graph per precision under RUN/export/; returns {precision: path} (fp32 always).

    The graphs and their sidecars are one unit (core/unit.py): an interrupted export leaves the earlier
    export as it was, never a graph next to a sidecar that describes another graph."""
    from segdeploy.export.precision import CALIB_METHODS, INT8_ACTIVATIONS, INT8_QUANTIZERS

    cfg = cfg or run.load_config().export
    validate_section("export", cfg)
    precisions = list(dict.fromkeys(["fp32", *cfg.precisions]))
    for precision in precisions:
        run.onnx_path(precision)  # unknown precision: one-line error before any work
    if cfg.calib_method not in CALIB_METHODS:
        raise ConfigError(f"unknown calibration method {cfg.calib_method!r} (known: {', '.join(CALIB_METHODS)})")
    if (cfg.int8_quantizer or "nncf") not in INT8_QUANTIZERS:
        raise ConfigError(f"unknown INT8 quantiser {cfg.int8_quantizer!r} (known: {', '.join(INT8_QUANTIZERS)})")
    if cfg.max_miou_drop is not None and cfg.int8_quantizer == "ort":
        raise ConfigError("--max-miou-drop uses NNCF's accuracy control: drop --int8-quantizer ort")
    if (cfg.int8_quantizer or "nncf") == "nncf" and cfg.calib_method != "minmax" and "int8" in precisions:
        raise ConfigError(f"--calib-method {cfg.calib_method} is ONNX Runtime's calibration: add --int8-quantizer ort "
                          "(NNCF, the default, picks its own ranges: leave --calib-method at minmax)")
    if cfg.exporter not in (None, *EXPORTERS):
        raise ConfigError(f"unknown exporter {cfg.exporter!r} (known: {', '.join(EXPORTERS)})")
    if cfg.int8_activations not in INT8_ACTIVATIONS:
        raise ConfigError(f"unknown INT8 activation type {cfg.int8_activations!r} "
                          f"(known: {', '.join(INT8_ACTIVATIONS)})")
    if cfg.deploy_outputs:
        from segdeploy.export.deploy_graph import check_outputs

        check_outputs(cfg.deploy_outputs)
    model, run_cfg, class_names = load_model(run)
    spec = MODELS[run_cfg.model.name]
    cfg = dataclasses.replace(cfg, exporter=cfg.exporter or spec.exporter)  # the family's unless asked
    path = run.onnx_path("fp32")
    size = run_cfg.data.size
    height, width = input_hw(size)
    with FileUnit(run.path) as unit:
        done = _export_fp32(model, spec, unit, path, size, cfg)
        sidecar = {
            "file": path.name, "precision": "fp32",
            "input": {"name": "images", "shape": ["batch", 3, height, width], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", len(class_names), height, width], "dtype": "float32"},
            "input_size": size, "class_names": class_names,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "model": run_cfg.model.name, "encoder": run_cfg.model.encoder,
            "opset": graph_opset(unit.path(path)), "exporter": cfg.exporter, "torch_version": torch.__version__,
            **({"exporter_reason": spec.exporter_reason} if cfg.exporter == spec.exporter != "dynamo" else {}),
            "segdeploy_version": __version__, "sha256": fileio.sha256_file(unit.path(path)),
            "checkpoint": "checkpoints/best.pt", "checkpoint_sha256": fileio.sha256_file(run.checkpoint("best")),
            "graph": "plain", **done,
        }
        unit.write_json(run.onnx_sidecar("fp32"), sidecar)
        sidecars = {"fp32": sidecar}
        for precision in precisions[1:]:
            sidecars[precision] = _export_precision(run, run_cfg, cfg, unit, sidecar, precision)
        for precision in precisions:
            _export_deploy(run, run_cfg, cfg, unit, sidecars[precision])
    return {precision: run.onnx_path(precision) for precision in precisions}


def _export_deploy(run: RunDir, run_cfg: Config, cfg: ExportConfig, unit: FileUnit, sidecar: dict) -> None:
    """With deploy outputs (--deploy), model[.precision].deploy.onnx around the graph just written
    (export/deploy_graph.py); without, a deploy graph of this precision from an earlier export is removed: it wraps another graph."""
    from segdeploy.export.deploy_graph import build_deploy_graph, check_outputs, metadata

    precision = sidecar["precision"]
    target, target_sidecar = run.onnx_path(precision, deploy=True), run.onnx_sidecar(precision, deploy=True)
    if not cfg.deploy_outputs:
        for stale in (target, target_sidecar):
            if stale.exists():
                unit.remove(stale)
        return
    outputs = check_outputs(cfg.deploy_outputs)
    props = metadata(sidecar, _palette(run_cfg), VOID_LABEL, outputs)
    staged = unit.path(target)
    details = build_deploy_graph(unit.path(run.onnx_path(precision)), staged, sidecar["mean"], sidecar["std"],
                                 outputs, props)
    check_onnx(staged)
    details["source"] = run.onnx_path(precision).name  # the staged file's name is a temporary one
    unit.write_json(target_sidecar, {
        **sidecar, **details, "file": target.name, "graph": "deploy", "input": details["inputs"][0],
        "output": details["outputs"][0], "sha256": fileio.sha256_file(staged),
        "metadata_props": sorted(props)})


def _palette(run_cfg: Config) -> list[list[int]] | None:
    """The class map's colours when the run's data has one (classes.json), else None."""
    from segdeploy.data.classmap import find_class_map

    if not run_cfg.data.root and not run_cfg.data.classes:
        return None
    try:
        class_map = find_class_map(Path(run_cfg.data.root or "."), run_cfg.data.classes, run_cfg.data.void_label)
    except ConfigError:  # the data moved since training: the graph is still usable, without colours
        return None
    return None if class_map is None or class_map.palette is None else class_map.palette.tolist()


def _export_precision(run: RunDir, run_cfg: Config, cfg: ExportConfig, unit: FileUnit, sidecar: dict,
                      precision: str) -> dict:
    """model.<precision>.onnx from the staged FP32 graph, and its sidecar (returned)."""
    from segdeploy.export.precision import calibration_images, convert_fp16, quantize_int8

    source, target = run.onnx_path("fp32"), run.onnx_path(precision)
    staged_source, staged = unit.path(source), unit.path(target)
    if precision == "fp16":
        details = convert_fp16(staged_source, staged, io_fp16=cfg.io_fp16)
    elif (cfg.int8_quantizer or "nncf") == "nncf":
        from segdeploy.export.nncf_int8 import nncf_quantize, validation_arrays

        images, _ = calibration_images(run_cfg, cfg.calib_images)
        validation = validation_arrays(run_cfg) if cfg.max_miou_drop is not None else None
        details = nncf_quantize(staged_source, staged, images, activations=cfg.int8_activations,
                                validation=validation, max_miou_drop=cfg.max_miou_drop)
    else:
        images, _ = calibration_images(run_cfg, cfg.calib_images)
        details = quantize_int8(staged_source, staged, images, method=cfg.calib_method,
                                activations=cfg.int8_activations)
    check_onnx(staged)
    io_dtype = "float16" if precision == "fp16" and cfg.io_fp16 else "float32"
    written = {
        **sidecar, "file": target.name, "precision": precision,
        "input": {**sidecar["input"], "dtype": io_dtype}, "output": {**sidecar["output"], "dtype": io_dtype},
        "sha256": fileio.sha256_file(staged), "source": source.name, "source_sha256": sidecar["sha256"],
        precision: details,
    }
    unit.write_json(run.onnx_sidecar(precision), written)
    return written
