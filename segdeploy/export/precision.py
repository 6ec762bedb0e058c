"""Precision graphs: the FP32 ONNX graph simplified (onnxslim), converted to FP16, quantised to INT8 (Q/DQ).

TensorRT 10/11 strongly typed networks take their precision from the graph itself, so these files are
what a TensorRT engine will compute, and ONNX Runtime on a CPU can check their numbers here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from segdeploy.core import env, fileio
from segdeploy.core.errors import BackendUnavailable, ConfigError, SegdeployError, first_line

# Ops that overflow or lose too much in FP16 (long sums, exponentials): they compute in FP32, with
# Casts around them. onnxconverter-common's own list (ops ORT has no FP16 kernel for) is kept too.
FP16_KEEP_FP32_OPS = (
    "LayerNormalization", "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceMax", "ReduceMin", "ReduceProd",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
)
CALIB_METHODS = ("minmax", "entropy", "percentile")
# int8: symmetric signed activations, the only INT8 TensorRT runs. uint8: asymmetric unsigned activations,
# ONNX Runtime's fast x86 path (U8S8); measured ~3x faster than int8 (S8S8) activations on this CPU.
INT8_ACTIVATIONS = ("int8", "uint8")
# nncf: CPU graphs (export/nncf_int8.py), the default; ort: quantize_static below, the graph TensorRT parses.
INT8_QUANTIZERS = ("nncf", "ort")
# The INT8 graph TensorRT parses (int8 activations), placed as NVIDIA's Q/DQ guidance asks (the options
# nvidia-modelopt's ONNX INT8 quantiser passes to quantize_static): biases stay FP32, since TensorRT's ONNX
# parser rejects a DequantizeLinear of an INT32 bias; Q/DQ go on the inputs of weighted ops, not their
# outputs; per-channel weights along the output-channel axis (ConvTranspose: axis 1).
TENSORRT_QDQ_OPTIONS = {
    "QuantizeBias": False,
    "OpTypesToExcludeOutputQuantization": ["Conv", "ConvTranspose", "Gemm", "MatMul"],
    "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
}


# --------------------------------------------------------------------------- simplification


def simplify_graph(src: Path, dst: Path, rtol: float = 1e-3, atol: float = 1e-3) -> dict:
    """onnxslim `src` into `dst` if the slimmed graph gives the same logits on ONNX Runtime CPU.

    Returns {"simplified": bool, "max_abs_diff": float | None, "nodes_before", "nodes_after", "reason"}.
    When slimming fails or changes the numbers, `dst` is a copy of `src`.
    """
    import onnx

    original = onnx.load(str(src))
    info = {"simplified": False, "nodes_before": len(original.graph.node), "nodes_after": None,
            "max_abs_diff": None, "reason": ""}
    try:
        import onnxslim
    except ImportError:
        info["reason"] = "onnxslim not installed"
        _copy(src, dst)
        return info
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slimmed = onnxslim.slim(original)
    except Exception as exc:  # noqa: BLE001 - any failure of an optional optimiser means: keep the original
        info["reason"] = f"onnxslim failed: {type(exc).__name__}"
        _copy(src, dst)
        return info
    with fileio.atomic_path(dst) as tmp:
        onnx.save(slimmed, str(tmp))
    reference, candidate = _ort_outputs(src), _ort_outputs(dst)
    diff = float(np.abs(reference - candidate).max())
    info.update(nodes_after=len(slimmed.graph.node), max_abs_diff=diff)
    if np.allclose(reference, candidate, rtol=rtol, atol=atol):
        info["simplified"] = True
    else:
        info["reason"] = f"slimmed graph differs (max |diff| {diff:.2e}): kept the original"
        _copy(src, dst)
    return info


def _copy(src: Path, dst: Path) -> None:
    if Path(src).resolve() != Path(dst).resolve():
        fileio.write_bytes(dst, Path(src).read_bytes())


def _ort_outputs(path: Path, batch: int = 2, seed: int = 0) -> np.ndarray:
    """Logits of the graph at `path` for a fixed random input (ORT CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    shape = [batch if not isinstance(d, int) else d for d in model_input.shape]
    dtype = np.float16 if "float16" in model_input.type else np.float32
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return session.run(None, {model_input.name: x})[0].astype(np.float32)


# --------------------------------------------------------------------------- FP16


def convert_fp16(src: Path, dst: Path, io_fp16: bool = False,
                 keep_fp32_ops: tuple[str, ...] = FP16_KEEP_FP32_OPS) -> dict:
    """FP16 weights and activations; `keep_fp32_ops` (and the converter's defaults) stay FP32."""
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise BackendUnavailable("FP16 conversion needs onnxconverter-common: pip install onnxconverter-common") from None
    model = onnx.load(str(src))
    block_list = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_fp32_ops))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values truncated to FP16 range": expected for tiny weights
        converted = float16.convert_float_to_float16(model, keep_io_types=not io_fp16, op_block_list=block_list)
    # The converter leaves stale FP32 value_info entries beside the new FP16 ones around blocked ops
    # (e.g. Resize -> Concat), which strict shape inference rejects. They are only annotations: drop them.
    del converted.graph.value_info[:]
    if not io_fp16:
        _restore_fp32_outputs(converted.graph)
    with fileio.atomic_path(dst) as tmp:
        onnx.save(converted, str(tmp))
    return {"keep_fp32_ops": list(keep_fp32_ops), "io_fp16": io_fp16,
            "converter": "onnxconverter_common.float16.convert_float_to_float16"}


def _restore_fp32_outputs(graph) -> None:
    """keep_io_types misses outputs produced by a blocked op (Softmax, Resize at the end of DeepLab):
    the converter casts them back to FP16. Make every graph output FP32 again."""
    from onnx import TensorProto, helper

    producers = {out: node for node in graph.node for out in node.output}
    for output in graph.output:
        tensor_type = output.type.tensor_type
        if tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        node = producers.get(output.name)
        cast_to = [a for a in node.attribute if a.name == "to"] if node is not None and node.op_type == "Cast" else []
        if cast_to:
            cast_to[0].i = TensorProto.FLOAT  # the converter's FP32 -> FP16 cast becomes a no-op FP32 copy
        else:
            half = f"{output.name}_fp16"
            node.output[list(node.output).index(output.name)] = half
            for consumer in graph.node:  # other readers of the FP16 value
                for i, name in enumerate(consumer.input):
                    if name == output.name:
                        consumer.input[i] = half
            graph.node.append(helper.make_node("Cast", [half], [output.name], to=TensorProto.FLOAT,
                                               name=f"{output.name}_cast_to_fp32"))
        tensor_type.elem_type = TensorProto.FLOAT


# --------------------------------------------------------------------------- INT8 (ONNX Runtime's quantiser)


class _QuietRootLogger:
    def __enter__(self):
        import logging

        self.level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc):
        import logging

        logging.getLogger().setLevel(self.level)


class CalibrationReader:
    """Feeds ONNX Runtime's calibrator one preprocessed training image at a time and counts them.

    Implements onnxruntime.quantization.CalibrationDataReader (get_next, __len__, set_range), so the
    calibrator can consume it in strides and keep only a stride's activations in memory.
    """

    def __init__(self, images: np.ndarray, input_name: str, on_read=None):
        self.images = images  # float32 N x 3 x H x W, already normalised by preprocess.normalize
        self.input_name = input_name
        self.on_read = on_read
        self.images_read = 0
        self._indices = iter(range(len(images)))

    def get_next(self) -> dict | None:
        index = next(self._indices, None)
        if index is None:
            return None
        self.images_read += 1
        if self.on_read:
            self.on_read()
        return {self.input_name: self.images[index: index + 1]}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._indices = iter(range(start_index, min(end_index, len(self.images))))


def calibration_images(cfg, count: int) -> tuple[np.ndarray, list[str]]:
    """The first `count` images of the training split, through the shared preprocessing."""
    from segdeploy.core.config import copy_config
    from segdeploy.data.registry import build_dataset

    if count < 1:
        raise ConfigError(f"--calib-images must be >= 1, got {count}")
    data_cfg = copy_config(cfg).data
    data_cfg.max_images = count
    data_cfg.augment = "none"
    dataset = build_dataset(data_cfg, "train")
    if len(dataset) < count:
        raise ConfigError(f"--calib-images {count}, but the {data_cfg.dataset} training split has only "
                          f"{len(dataset)} images: pass --calib-images {len(dataset)} or fewer")
    return dataset.normalized_batch(range(count)), list(dataset.ids)


def _stride(count: int, limit: int = 16) -> int:
    """The largest divisor of `count` not above `limit` (ORT requires strides that divide the data)."""
    return max(d for d in range(1, min(count, limit) + 1) if count % d == 0)


def quantize_int8(src: Path, dst: Path, images: np.ndarray, method: str = "minmax",
                  per_channel: bool = True, percentile: float = 99.999, activations: str = "int8",
                  reduce_range: bool | None = None) -> dict:
    """ONNX Runtime's quantize_static Q/DQ graph: symmetric per-channel INT8 weights, activations INT8 (as
    TensorRT needs) or asymmetric UINT8 (ORT CPU's fast path). reduce_range (7-bit weights: CPUs without
    VNNI saturate int16 sums of 8-bit ones) None: on for uint8 activations (a CPU graph), off for int8."""
    import onnx
    import onnxruntime

    try:
        from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
    except ImportError:
        raise BackendUnavailable("INT8 quantisation needs onnxruntime: pip install onnxruntime") from None
    from segdeploy.core.progress import make_progress

    if method not in CALIB_METHODS:
        raise ConfigError(f"unknown calibration method {method!r} (known: {', '.join(CALIB_METHODS)})")
    if activations not in INT8_ACTIVATIONS:
        raise ConfigError(f"unknown INT8 activation type {activations!r} (known: {', '.join(INT8_ACTIVATIONS)})")
    symmetric = activations == "int8"
    reduce_range = (not symmetric) if reduce_range is None else reduce_range
    calibrate_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                        "percentile": CalibrationMethod.Percentile}[method]
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    stride = _stride(len(images))
    extra_options = {
        "ActivationSymmetric": symmetric,  # TensorRT's INT8 has no zero points
        "WeightSymmetric": True,
        "CalibStridedMinMax": stride,  # for every method: only `stride` images' activations in memory at once
        **(TENSORRT_QDQ_OPTIONS if symmetric else {}),
    }
    if method == "percentile":
        extra_options["CalibPercentile"] = percentile
    quiet = _QuietRootLogger()  # ORT logs "consider pre-processing" on the root logger: onnxslim did that
    with quiet, make_progress() as progress:
        task = progress.add_task("calibrating int8", total=len(images), info=method)
        reader = CalibrationReader(images, input_name, on_read=lambda: progress.advance(task))
        with fileio.atomic_path(dst) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                quantize_static(str(src), str(tmp), reader, quant_format=QuantFormat.QDQ,
                                per_channel=per_channel,
                                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=calibrate_method,
                                reduce_range=reduce_range, extra_options=extra_options)
            except (ValueError, RuntimeError) as exc:
                raise SegdeployError(f"INT8 quantisation of {src} failed: {first_line(exc)}") from None
    return {"quantizer": "ort", "quantizer_version": onnxruntime.__version__,
            "settings": {"quantize_static": "QDQ", "reduce_range": reduce_range,
                         "placement": "NVIDIA Q/DQ (TensorRT)" if symmetric else "ONNX Runtime default"},
            "calibrated_on": env.isa_facts(), "quant_format": "QDQ", "per_channel": per_channel,
            "activation_type": activations, "weight_type": "int8", "symmetric_activations": symmetric,
            "tensorrt_compatible": symmetric, "quantize_bias": not symmetric,
            "calibration": {"method": method, "images": reader.images_read, "split": "train",
                            "stride": stride, **({"percentile": percentile} if method == "percentile" else {})}}
