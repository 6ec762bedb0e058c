"""What a deployed graph takes and returns, read from the ONNX graph itself (names, element types, shapes),
with the class names its sidecar records. A TensorRT engine is described by the graph it was built from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segdeploy.core.errors import SegdeployError
from segdeploy.core.rundir import RunDir
from segdeploy.runtime.variants import Variant, artifact_path


def _tensors(values, initializers: set[str]) -> list[dict[str, Any]]:
    from onnx import helper

    found = []
    for value in values:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        found.append({"name": value.name, "dtype": str(helper.tensor_dtype_to_np_dtype(tensor.elem_type)),
                      "shape": dims})
    return found


def read_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX file: name, numpy dtype name, shape (str or None: a dynamic axis)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable graph is the same user error
        raise SegdeployError(f"cannot read the ONNX graph {path}: {exc}") from None
    initializers = {i.name for i in model.graph.initializer}
    return {"inputs": _tensors(model.graph.input, initializers), "outputs": _tensors(model.graph.output, set())}


def formats(io: dict[str, list[dict[str, Any]]]) -> tuple[str, str]:
    """(input_format, output_format) as runners name them (runtime/base.py): uint8 NHWC images in or
    normalised float NCHW; a class-index mask out (an integer output) or logits."""
    first_in, first_out = io["inputs"][0], io["outputs"][0]
    image_in = first_in["dtype"] == "uint8" and len(first_in["shape"]) == 4 and first_in["shape"][-1] == 3
    mask_out = first_out["dtype"].startswith(("uint", "int"))
    return ("uint8_nhwc" if image_in else "normalized"), ("mask" if mask_out else "logits")


def onnx_source(run: RunDir, variant: Variant) -> Path:
    """The ONNX graph behind a variant's file (itself, or the graph an engine was built from)."""
    path = artifact_path(variant, run)
    return path if path.suffix == ".onnx" else run.onnx_path(variant.graph or "fp32", bool(variant.option("deploy")))


def graph_io(run: RunDir, variant: Variant, deployed: Path) -> dict[str, Any]:
    source = onnx_source(run, variant)
    io = read_io(deployed if deployed.suffix == ".onnx" else source)
    input_format, output_format = formats(io)
    sidecar = run.read_json(source.with_suffix(".json")) or {}
    names = sidecar.get("class_names") or []
    if not names:
        raise SegdeployError(f"{source.with_suffix('.json')} records no class names",
                             hint=f"export it again: `segdeploy export {run.path}`")
    return {**io, "input_format": input_format, "output_format": output_format, "class_names": names,
            "sidecar": sidecar}
