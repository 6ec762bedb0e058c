"""INT8 graphs for CPUs through NNCF's post-training quantisation of the ONNX graph (the default INT8 path).

x86 CPUs without VNNI (AVX2 only) multiply INT8 with VPMADDUBSW, whose pair sums saturate at int16, so the
graph must hold there too, whatever CPU it was made on. Two measures (benchmarks/int8_isa.py, OpenVINO under an
AVX2 cap): NNCF's overflow fix on every convolution (OverflowFix.ENABLE: 7-bit weights; its default,
FIRST_LAYER, covers only the convolution that sees the image, and a signed input to a later one saturated
too), and depthwise convolutions whose quantised input can be negative kept in float (MobileNetV4's blocks:
OpenVINO 2026.4's AVX2 INT8 kernels cost a U-Net MobileNetV4-medium 3.8 mIoU points with them quantised, even
with 7-bit weights; 0.2 in float). Its graphs carry UINT8 activations after ReLUs (preset performance) or
non-zero zero points (preset mixed): TensorRT's ONNX parser takes neither (onnx-tensorrt operators.md:
DequantizeLinear INT8/FP8/FP4/INT4 with zero points of zero; UINT8 only as network input or output), so the
TensorRT graph stays ONNX Runtime's quantize_static with NVIDIA's Q/DQ placement (export/precision.py).

With a mIoU budget, `nncf.quantize_with_accuracy_control` (ONNX backend, NNCF >= 2.6) ranks the quantised
layers by their effect on the logits and reverts the fewest to float that bring the validation mIoU drop
inside the budget.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from segdeploy.core import env, fileio
from segdeploy.core.errors import BackendUnavailable, ConfigError, SegdeployError

# --int8-activations -> NNCF preset: int8 keeps activations symmetric (zero points 0), uint8 makes them
# asymmetric; weights are symmetric per-channel INT8 in both.
NNCF_PRESETS = {"int8": "performance", "uint8": "mixed"}
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def import_nncf():
    try:
        import nncf
    except ImportError:
        raise BackendUnavailable("INT8 through NNCF needs nncf: pip install 'segdeploy[openvino]' "
                                 "(or pass --int8-quantizer ort)") from None
    return nncf


class _QuietNncf:
    """NNCF logs INFO lines and warnings per run on its own logger: only errors while it works."""

    def __enter__(self):
        self.logger = logging.getLogger("nncf")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        self.logger.setLevel(self.level)


def signed_input_depthwise(model) -> list[str]:
    """Names of the depthwise convolutions of a quantised graph whose input quantiser represents negative
    values (an INT8 zero point above -128, or a UINT8 one above 0): the ones kept in float."""
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv" or next((a.i for a in node.attribute if a.name == "group"), 1) == 1:
            continue
        source = producers.get(node.input[0])
        if source is None or source.op_type != "DequantizeLinear" or len(source.input) < 3:
            continue
        zero_point = constants.get(source.input[2])
        if zero_point is not None and _can_be_negative(zero_point):
            names.append(node.name)
    return names


def _can_be_negative(zero_point: np.ndarray) -> bool:
    lowest = np.iinfo(zero_point.dtype).min
    return bool((zero_point.astype(np.int32) > lowest).any())


def float_layers(model) -> list[str]:
    """Names of the weighted nodes (Conv, Gemm, MatMul...) whose weights are not dequantised INT8."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1:
            weight = producers.get(node.input[1])
            if weight is None or weight.op_type != "DequantizeLinear":
                names.append(node.name)
    return names


def weighted_layers(model) -> int:
    return sum(node.op_type in WEIGHTED_OPS for node in model.graph.node)


class MiouValidation:
    """NNCF's validation function: mIoU in points of a graph on (image, mask) items through ONNX Runtime,
    with each item's own mIoU. Per-item metrics put NNCF's accuracy restorer in its metric mode, the only
    one its ONNX backend ranks in (NNCF 3.4: rank_functions.create_normalized_mse_func is OpenVINO-only);
    ranking calls this once per item, so the last graph's session is kept."""

    def __init__(self, input_name: str, num_classes: int, threads: int | None = None):
        self.input_name, self.num_classes, self.threads = input_name, num_classes, threads
        self._last: tuple = (None, None)  # (graph, its ONNX Runtime session)

    def _session(self, model):
        import onnxruntime as ort

        if self._last[0] is not model:
            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            self._last = (model, ort.InferenceSession(model.SerializeToString(), options,
                                                      providers=["CPUExecutionProvider"]))
        return self._last[1]

    def __call__(self, model, items) -> tuple[float, list[float]]:
        from segdeploy.data.metrics import confusion_matrix, summarize

        session = self._session(model)
        matrix = np.zeros((self.num_classes, self.num_classes), np.int64)
        per_item = []
        for image, mask in items:
            logits = session.run(None, {self.input_name: image})[0]
            item = confusion_matrix(mask, logits.argmax(1), self.num_classes)
            matrix += item
            score = summarize(item)["miou"]
            per_item.append(0.0 if np.isnan(score) else 100 * score)
        return 100 * summarize(matrix)["miou"], per_item


def nncf_quantize(src: Path, dst: Path, images: np.ndarray, activations: str = "int8",
                  validation: tuple[np.ndarray, np.ndarray, int] | None = None,
                  max_miou_drop: float | None = None, threads: int | None = None) -> dict:
    """Quantise the FP32 graph `src` into `dst` with NNCF, calibrated on `images` (normalised NCHW).

    With `max_miou_drop` (mIoU points) and `validation` = (images, masks, num_classes), through
    quantize_with_accuracy_control: the layers it kept in float and the measured drop go to the sidecar."""
    import onnx

    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import OverflowFix, QuantizationParameters

    if activations not in NNCF_PRESETS:
        raise ConfigError(f"unknown INT8 activation type {activations!r} (known: {', '.join(NNCF_PRESETS)})")
    if max_miou_drop is not None and validation is None:
        raise ConfigError("--max-miou-drop needs the run's validation split")
    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    preset = nncf.QuantizationPreset(NNCF_PRESETS[activations])
    calibration = nncf.Dataset(list(images), lambda image: {input_name: image[None]})
    # Activations per tensor: NNCF otherwise quantises the inputs of some convolutions (DeepLabV3+'s depthwise
    # ones) per channel, which ONNX Runtime refuses ("QLinearConv: input zero point must be a scalar or 1D
    # tensor of size 1"); per tensor is what ONNX Runtime's own quantiser writes and what every runtime runs.
    advanced = nncf.AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.ENABLE, activations_quantization_params=QuantizationParameters(per_channel=False))
    call = {"preset": preset, "subset_size": len(images), "advanced_parameters": advanced}
    with _QuietNncf():
        try:
            quantized, kept_float, details = _quantize(nncf, model, calibration, call, validation, max_miou_drop,
                                                       threads)
        except (nncf.ValidationError, nncf.InternalError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SegdeployError(f"INT8 quantisation of {src} with NNCF failed: {first}") from None
    with fileio.atomic_path(dst) as tmp:
        onnx.save(quantized, str(tmp))
    kept = float_layers(quantized)
    settings = {"preset": preset.value, "target_device": "ANY", "subset_size": len(images),
                "overflow_fix": "enable (7-bit weights in every convolution NNCF applies it to)",
                "float_signed_input_depthwise": kept_float, "fast_bias_correction": True}
    return {"quantizer": "nncf", "quantizer_version": nncf.__version__, "settings": settings,
            "quant_format": "QDQ", "per_channel": True, "per_channel_activations": False,
            "activation_type": activations, "weight_type": "int8",
            "symmetric_activations": activations == "int8", "tensorrt_compatible": False,
            "float_layers": kept, "weighted_layers": weighted_layers(quantized), **details,
            "calibration": {"method": "minmax (NNCF)", "images": len(images), "split": "train"},
            "calibrated_on": env.isa_facts()}


def _quantize(nncf, model, calibration, call: dict, validation: tuple | None, max_miou_drop: float | None,
              threads: int | None) -> tuple:
    """(quantised graph, depthwise convolutions kept in float, accuracy-control details): a first pass tells
    which depthwise inputs NNCF made signed, a second leaves those convolutions out."""
    quantized = nncf.quantize(model, calibration, **call)
    kept_float = signed_input_depthwise(quantized)
    if kept_float:
        call["ignored_scope"] = nncf.IgnoredScope(names=kept_float)
    if max_miou_drop is not None:
        call["advanced_quantization_parameters"] = call.pop("advanced_parameters")
        quantized, details = _with_accuracy_control(nncf, model, calibration, call, validation, max_miou_drop,
                                                    threads)
        return quantized, kept_float, details
    return (nncf.quantize(model, calibration, **call) if kept_float else quantized), kept_float, {}


def validation_arrays(cfg) -> tuple[np.ndarray, np.ndarray, int]:
    """The run's validation split: normalised NCHW images, masks and the class count."""
    from segdeploy.core.config import copy_config
    from segdeploy.data.registry import build_dataset

    data_cfg = copy_config(cfg).data
    data_cfg.augment = "none"
    dataset = build_dataset(data_cfg, "val")
    if len(dataset) == 0:
        raise ConfigError("--max-miou-drop measures mIoU on the validation split, and this run has none")
    return dataset.normalized_batch(range(len(dataset))), np.asarray(dataset.masks), dataset.num_classes


def _with_accuracy_control(nncf, model, calibration, settings: dict, validation: tuple[np.ndarray, np.ndarray, int],
                           max_drop: float, threads: int | None) -> tuple:
    import tempfile

    import onnx
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    images, masks, num_classes = validation
    input_name = model.graph.input[0].name
    items = [(images[i: i + 1], masks[i: i + 1]) for i in range(len(images))]
    validate = MiouValidation(input_name, num_classes, threads)
    with tempfile.TemporaryDirectory(prefix="segdeploy-nncf-") as folder:
        restorer = AdvancedAccuracyRestorerParameters(num_ranking_workers=1, intermediate_model_dir=folder)
        quantized = nncf.quantize_with_accuracy_control(
            model, calibration, nncf.Dataset(items, lambda item: {input_name: item[0]}), validate,
            max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, advanced_accuracy_restorer_parameters=restorer,
            **settings)
        first_pass = onnx.load(str(Path(folder) / "intermediate_model.onnx"))
    fp32, full, final = (validate(graph, items)[0] for graph in (model, first_pass, quantized))
    reverted = [name for name in float_layers(quantized) if name not in set(float_layers(first_pass))]
    return quantized, {"accuracy_control": {
        "max_miou_drop": max_drop, "validation_images": len(items), "metric": "mIoU points, ONNX Runtime CPU",
        "fp32_miou": fp32, "fully_quantized_miou": full, "miou": final,
        "miou_drop": fp32 - final, "fully_quantized_drop": fp32 - full,
        "reverted_to_float": reverted, "within_budget": fp32 - final <= max_drop}}
