"""Reading an exported graph: it must be the graph its sidecar describes, made for this run's classes and
input size from this run's checkpoint. Whatever runs a graph (ONNX Runtime, a TensorRT build) reads it
through `checked_graph`, so a copied, edited or stale graph is refused with what differs."""

from __future__ import annotations

from pathlib import Path

from segdeploy.core import fileio
from segdeploy.core.errors import ConfigError, SegdeployError, StageMissingError
from segdeploy.core.rundir import RunDir
from segdeploy.core.size import input_hw, size_label


def reexport_hint(run: RunDir, precision: str, deploy: bool = False) -> str:
    return f"export it again: `segdeploy export {run.path} --precision {precision}{' --deploy' if deploy else ''}`"


def graph_differences(run: RunDir, precision: str, sidecar: dict, deploy: bool = False) -> list[str]:
    """How the graph file and the run differ from what the sidecar recorded (empty: they agree)."""
    path, cfg = run.onnx_path(precision, deploy), run.load_config()
    name = run.onnx_sidecar(precision, deploy).name
    found = []
    if sidecar.get("graph", "plain") != ("deploy" if deploy else "plain"):
        found.append(f"{name} describes a {sidecar.get('graph', 'plain')} graph")
    sha = fileio.sha256_cached(path)
    if sidecar.get("sha256") != sha:
        found.append(f"its sha256 is {sha[:12]}..., {name} records {str(sidecar.get('sha256'))[:12]}...")
    if sidecar.get("precision", precision) != precision:
        found.append(f"{name} describes a {sidecar.get('precision')} graph")
    recorded = _recorded_hw(sidecar.get("input_size"))
    if recorded != input_hw(cfg.data.size):
        shown = size_label(recorded) if recorded else repr(sidecar.get("input_size"))
        found.append(f"it takes {shown}px inputs, the run {size_label(cfg.data.size)}px")
    classes = len(sidecar.get("class_names") or [])
    if cfg.model.num_classes is not None and classes != cfg.model.num_classes:
        found.append(f"it predicts {classes} classes, the run {cfg.model.num_classes}")
    if run.checkpoint_changed(sidecar):
        found.append("it was exported from another checkpoints/best.pt (trained again since?)")
    return found


def read_sidecar(run: RunDir, precision: str, deploy: bool = False) -> dict:
    sidecar_path = run.onnx_sidecar(precision, deploy)
    if not sidecar_path.is_file():
        raise StageMissingError(f"{sidecar_path} not found: nothing records what "
                                f"{run.onnx_path(precision, deploy).name} is",
                                hint=reexport_hint(run, precision, deploy))
    sidecar = run.read_json(sidecar_path)
    if not isinstance(sidecar, dict):
        raise SegdeployError(f"{sidecar_path} is not a graph sidecar", hint=reexport_hint(run, precision, deploy))
    return sidecar


def checked_graph(run: RunDir, precision: str = "fp32", deploy: bool = False) -> Path:
    """RUN/export/model[.precision][.deploy].onnx after checking it against its sidecar and the run."""
    path = run.require(run.onnx_path(precision, deploy),
                       f"export --precision {precision}{' --deploy' if deploy else ''}")
    differences = graph_differences(run, precision, read_sidecar(run, precision, deploy), deploy)
    if differences:
        raise SegdeployError(f"{path} is not the graph {run.onnx_sidecar(precision, deploy).name} describes for "
                             f"this run: {'; '.join(differences)}", hint=reexport_hint(run, precision, deploy))
    return path


def checked_extra_graph(run: RunDir, name: str) -> Path:
    """An extra graph of the family (SAM2's vision_features.onnx), checked against model.json's record."""
    path = run.require(run.onnx_path("fp32").with_name(f"{name}.onnx"), "export")
    record = (read_sidecar(run, "fp32").get("extra_graphs") or {}).get(name, {})
    recorded = record.get("sha256")
    if recorded and recorded != fileio.sha256_cached(path):
        raise SegdeployError(f"{path} is not the graph {run.onnx_sidecar('fp32').name} records (sha256 differs)",
                             hint=reexport_hint(run, "fp32"))
    return path


def _recorded_hw(size) -> tuple[int, int] | None:
    try:
        return input_hw(size)
    except ConfigError:  # a sidecar without (or with a garbled) input size
        return None
