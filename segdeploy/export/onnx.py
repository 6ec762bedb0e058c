"""`segdeploy export`: the trained model as an ONNX graph with a JSON sidecar."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import warnings
from pathlib import Path
from typing import Iterator

import torch

from segdeploy import __version__

from segdeploy.core import fileio
from segdeploy.core.config import Config, ExportConfig
from segdeploy.core.errors import ConfigError, SegdeployError, first_line
from segdeploy.core.rundir import RunDir
from segdeploy.core.size import input_hw
from segdeploy.core.unit import FileUnit
from segdeploy.core.validate import validate_section
from segdeploy.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, VOID_LABEL
from segdeploy.models.checkpoint import load_model
from segdeploy.models.registry import MODELS, ModelSpec

EXPORTERS = ("torchscript", "dynamo")


def export_onnx(model: torch.nn.Module, path: Path, size: int | list[int], opset: int = 17,
                exporter: str = "torchscript", example_batch: int = 2, output_name: str = "logits") -> None:
    """Export with a dynamic batch axis and static H, W: input `images` [N,3,H,W] -> output `logits` [N,C,H,W]."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown exporter {exporter!r} (known: {', '.join(EXPORTERS)})")
    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        raise SegdeployError("the dynamo exporter (torch.export) needs onnxscript: pip install onnxscript, "
                             "or export with --exporter torchscript")
    example = torch.randn(example_batch, 3, *input_hw(size))
    with fileio.atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=[output_name],
                              dynamic_axes={"images": {0: "batch"}, output_name: {0: "batch"}},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        else:
            batch = torch.export.Dim("batch", min=1, max=1024)
            with _out_of_place_activations(model):
                program = torch.onnx.export(model, (example,), input_names=["images"], output_names=[output_name],
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
    staged = unit.path(path)
    if spec.fold_constants:  # graphs the checked simplification cannot trace (SAM2's position embeddings)
        export_onnx(model, staged, size, opset=cfg.opset, exporter=cfg.exporter)
        info = {"simplify": {"simplified": True, "reason": "constants folded (onnxslim)"},
                "constant_folding": fold_constants(staged)}
    elif cfg.simplify:  # the raw graph apart, so the check compares the slimmed graph with it, not with itself
        raw = unit.scratch(path)
        export_onnx(model, raw, size, opset=cfg.opset, exporter=cfg.exporter)
        info = {"simplify": simplify_graph(raw, staged)}
    else:
        export_onnx(model, staged, size, opset=cfg.opset, exporter=cfg.exporter)
        info = {"simplify": {"simplified": False, "reason": "disabled (--no-simplify)"}}
    for name, (module, output) in (spec.extra_graphs(model) if spec.extra_graphs else {}).items():
        extra = unit.path(path.with_name(f"{name}.onnx"))
        export_onnx(module, extra, size, opset=cfg.opset, exporter=cfg.exporter, output_name=output)
        if spec.fold_constants:
            fold_constants(extra)
        info.setdefault("extra_graphs", {})[name] = {"file": f"{name}.onnx", "output": output,
                                                     "sha256": fileio.sha256_file(extra)}
    return info


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
