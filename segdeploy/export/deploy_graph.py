"""The deployment graph: uint8 RGB images in, class-index mask out (`segdeploy export --deploy`).

Composed at the ONNX level around an exported graph of any precision (fp32, fp16, both INT8 flavours),
so the model inside is exactly the graph parity and bench measured as `model[.precision].onnx`:

    images uint8 [N, H, W, 3] -> Cast float -> Transpose NCHW -> / 255 -> - mean -> / std (-> Cast fp16)
    -> the plain graph -> logits [N, C, H, W] -> ArgMax(axis=1, keepdims=0) -> Cast -> mask [N, H, W]
                                               -> Softmax(axis=1) -> probs float32 [N, C, H, W] (optional)

The preprocessing ops are those of `data.preprocess.normalize`, in the same order and in float32, so
on ONNX Runtime the mask equals the argmax of the plain graph's logits bit for bit. The transpose comes
before the arithmetic, so mean/std broadcast over whole H x W planes ([1, 3, 1, 1]): ONNX Runtime broadcasts
a trailing axis of 3 element by element (about 120 ms against about 1 ms for an 8 x 128 x 128 batch on the
project's CPU). It comes after the Cast because TensorRT takes UINT8 only as a network input or output.
The graph describes itself: class names, palette, input size, mean/std, void label and checkpoint hash in `metadata_props`
(keys `segdeploy.*`, values JSON). TensorRT's ONNX parser (onnx-tensorrt docs/operators.md, TensorRT 10)
supports every op added here: Cast (FP32, FP16, INT32, INT64, UINT8, BOOL), Div/Sub (FP32, FP16),
Transpose, ArgMax (via TopK), Softmax; UINT8 only as a network input or output, which is how it is used.
"""

from __future__ import annotations

import json
from pathlib import Path

from segdeploy.core import fileio
from segdeploy.core.errors import ConfigError, SegdeployError

DEPLOY_OUTPUTS = ("mask", "probs")
INPUT_NAME = "images"
METADATA_PREFIX = "segdeploy."
UINT8_MASK_MAX_CLASSES = 255  # more classes: the mask is int32
MIN_PROBS_OPSET = 13  # Softmax over one axis (earlier opsets flatten the trailing axes)


def check_outputs(outputs: list[str]) -> tuple[str, ...]:
    """--deploy-outputs: `mask` first, optionally `probs`; anything else is a one-line error."""
    chosen = tuple(dict.fromkeys(o.strip() for o in outputs if o.strip()))
    unknown = [o for o in chosen if o not in DEPLOY_OUTPUTS]
    if unknown or "mask" not in chosen:
        raise ConfigError(f"--deploy-outputs must be mask or mask,probs (known: {', '.join(DEPLOY_OUTPUTS)}), "
                          f"got {','.join(outputs) or 'nothing'}")
    return tuple(o for o in DEPLOY_OUTPUTS if o in chosen)


def mask_dtype(num_classes: int) -> str:
    return "uint8" if num_classes <= UINT8_MASK_MAX_CLASSES else "int32"


def io_description(height: int, width: int, num_classes: int, outputs: tuple[str, ...]) -> dict:
    """The graph's inputs and outputs as the sidecar records them (names, dtypes, shapes)."""
    described = {"mask": {"name": "mask", "dtype": mask_dtype(num_classes), "shape": ["batch", height, width]},
                 "probs": {"name": "probs", "dtype": "float32", "shape": ["batch", num_classes, height, width]}}
    return {"inputs": [{"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", height, width, 3]}],
            "outputs": [described[o] for o in outputs]}


def metadata(sidecar: dict, palette: list[list[int]] | None, void_label: int,
             outputs: tuple[str, ...]) -> dict[str, str]:
    """metadata_props of a deploy graph (from the sidecar of the graph it wraps): `segdeploy.<key>` -> JSON."""
    values = {"graph": "deploy", "precision": sidecar["precision"], "class_names": list(sidecar["class_names"]),
              "input_size": sidecar["input_size"], "input_layout": "NHWC uint8 RGB", "mean": list(sidecar["mean"]),
              "std": list(sidecar["std"]), "void_label": void_label, "checkpoint_sha256": sidecar["checkpoint_sha256"],
              "outputs": list(outputs)}
    if palette is not None:
        values["palette"] = [list(map(int, color)) for color in palette]
    return {f"{METADATA_PREFIX}{key}": json.dumps(value) for key, value in values.items()}


def read_metadata(path: Path) -> dict:
    """The `segdeploy.*` metadata of an ONNX file, decoded (prefix removed)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len(METADATA_PREFIX):]: json.loads(p.value) for p in model.metadata_props
            if p.key.startswith(METADATA_PREFIX)}


def build_deploy_graph(plain: Path, target: Path, mean, std, outputs: tuple[str, ...] = ("mask",),
                       props: dict[str, str] | None = None) -> dict:
    """Write the deploy graph of the plain graph `plain` to `target`; returns what the sidecar records."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(plain))
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise SegdeployError(f"{plain}: a deploy graph wraps one input and one output, found "
                             f"{len(graph.input)} and {len(graph.output)}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if "probs" in outputs and opset < MIN_PROBS_OPSET:
        raise ConfigError(f"--deploy-outputs probs needs opset >= {MIN_PROBS_OPSET} (the graph has {opset}): "
                          f"export with --opset {MIN_PROBS_OPSET} or more")
    plain_input, logits = graph.input[0], graph.output[0]
    batch, channels, height, width = plain_input.type.tensor_type.shape.dim
    num_classes = logits.type.tensor_type.shape.dim[1].dim_value
    if channels.dim_value != 3 or not height.dim_value or not width.dim_value or not num_classes:
        raise SegdeployError(f"{plain}: expected input [N, 3, H, W] at a static size and static classes")
    batch_dim = batch.dim_param or batch.dim_value
    normalized = "deploy/normalized"
    for node in graph.node:  # the plain graph now reads the in-graph preprocessing's output
        node.input[:] = [normalized if name == plain_input.name else name for name in node.input]
    _preprocess(graph, plain_input.type.tensor_type.elem_type, normalized, mean, std)
    dtype = mask_dtype(num_classes)
    _postprocess(graph, logits, outputs, dtype)
    del graph.input[:]
    del graph.output[:]
    graph.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8,
                                                     [batch_dim, height.dim_value, width.dim_value, 3]))
    mask_type = TensorProto.UINT8 if dtype == "uint8" else TensorProto.INT32
    graph.output.append(helper.make_tensor_value_info("mask", mask_type,
                                                      [batch_dim, height.dim_value, width.dim_value]))
    if "probs" in outputs:
        graph.output.append(helper.make_tensor_value_info(
            "probs", TensorProto.FLOAT, [batch_dim, num_classes, height.dim_value, width.dim_value]))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **(props or {})})
    with fileio.atomic_path(target) as tmp:
        onnx.save(model, str(tmp))
    return {"source": plain.name, "source_sha256": fileio.sha256_file(plain), "mask_dtype": dtype,
            "nodes_added": ["Cast", "Transpose", "Div", "Sub", "Div",
                            *(["Cast"] if plain_input.type.tensor_type.elem_type != TensorProto.FLOAT else []),
                            "ArgMax", "Cast", *(["Softmax"] if "probs" in outputs else [])],
            **io_description(height.dim_value, width.dim_value, num_classes, outputs)}


def _preprocess(graph, model_dtype: int, normalized: str, mean, std) -> None:
    """uint8 NHWC `images` -> the plain graph's input `normalized` (float NCHW), as preprocess.normalize does."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    per_channel = (1, 3, 1, 1)
    graph.initializer.extend([numpy_helper.from_array(np.array(255.0, np.float32), "deploy/255"),
                              numpy_helper.from_array(np.asarray(mean, np.float32).reshape(per_channel), "deploy/mean"),
                              numpy_helper.from_array(np.asarray(std, np.float32).reshape(per_channel), "deploy/std")])
    standardized = normalized if model_dtype == TensorProto.FLOAT else "deploy/normalized_fp32"
    nodes = [helper.make_node("Cast", [INPUT_NAME], ["deploy/images_fp32"], to=TensorProto.FLOAT, name="deploy/cast"),
             helper.make_node("Transpose", ["deploy/images_fp32"], ["deploy/images_nchw"], perm=[0, 3, 1, 2],
                              name="deploy/nchw"),
             helper.make_node("Div", ["deploy/images_nchw", "deploy/255"], ["deploy/scaled"], name="deploy/scale"),
             helper.make_node("Sub", ["deploy/scaled", "deploy/mean"], ["deploy/centered"], name="deploy/mean"),
             helper.make_node("Div", ["deploy/centered", "deploy/std"], [standardized], name="deploy/std")]
    if model_dtype != TensorProto.FLOAT:  # an FP16-input graph (--io-fp16)
        nodes.append(helper.make_node("Cast", [standardized], [normalized], to=model_dtype,
                                      name="deploy/cast_model_input"))
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)


def _postprocess(graph, logits, outputs: tuple[str, ...], dtype: str) -> None:
    """logits -> `mask` (ArgMax over classes, first index on ties as numpy) and optionally `probs`."""
    from onnx import TensorProto, helper

    mask_type = TensorProto.UINT8 if dtype == "uint8" else TensorProto.INT32
    graph.node.extend([
        helper.make_node("ArgMax", [logits.name], ["deploy/argmax"], axis=1, keepdims=0, name="deploy/argmax"),
        helper.make_node("Cast", ["deploy/argmax"], ["mask"], to=mask_type, name="deploy/mask")])
    if "probs" in outputs:
        source = logits.name
        if logits.type.tensor_type.elem_type != TensorProto.FLOAT:
            source = "deploy/logits_fp32"
            graph.node.append(helper.make_node("Cast", [logits.name], [source], to=TensorProto.FLOAT,
                                               name="deploy/cast_logits"))
        graph.node.append(helper.make_node("Softmax", [source], ["probs"], axis=1, name="deploy/softmax"))
