"""INT8 graphs for CPUs through NNCF's post-training quantisation of the ONNX graph (the default INT8 path).

NNCF applies its overflow fix (OverflowFix.FIRST_LAYER unless told otherwise: 7-bit weights where the input
image meets the first convolution), which keeps x86 CPUs without VNNI, whose VPMADDUBSW sums saturate at
int16, as accurate as VNNI ones. Its graphs carry UINT8 activations after ReLUs (preset performance) or
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
    from nncf.quantization.advanced_parameters import QuantizationParameters

    if activations not in NNCF_PRESETS:
        raise ConfigError(f"unknown INT8 activation type {activations!r} (known: {', '.join(NNCF_PRESETS)})")
    if max_miou_drop is not None and validation is None:
        raise ConfigError("--max-miou-drop needs the run's validation split")
    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    preset = nncf.QuantizationPreset(NNCF_PRESETS[activations])
    calibration = nncf.Dataset(list(images), lambda image: {input_name: image[None]})
    # overflow_fix left None: NNCF's default for 8-bit weights and activations (FIRST_LAYER). Activations
    # per tensor: NNCF otherwise quantises the inputs of some convolutions (DeepLabV3+'s depthwise ones) per
    # channel, which ONNX Runtime refuses ("QLinearConv: input zero point must be a scalar or 1D tensor of
    # size 1"); per tensor is what ONNX Runtime's own quantiser writes and what every runtime runs.
    advanced = nncf.AdvancedQuantizationParameters(
        activations_quantization_params=QuantizationParameters(per_channel=False))
    details: dict = {}
    with _QuietNncf():
        try:
            if max_miou_drop is None:
                quantized = nncf.quantize(model, calibration, preset=preset, subset_size=len(images),
                                          advanced_parameters=advanced)
            else:
                settings = {"preset": preset, "subset_size": len(images), "advanced_quantization_parameters": advanced}
                quantized, details = _with_accuracy_control(nncf, model, calibration, settings, validation,
                                                            max_miou_drop, threads)
        except (nncf.ValidationError, nncf.InternalError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SegdeployError(f"INT8 quantisation of {src} with NNCF failed: {first}") from None
    with fileio.atomic_path(dst) as tmp:
        onnx.save(quantized, str(tmp))
    kept = float_layers(quantized)
    settings = {"preset": preset.value, "target_device": "ANY", "subset_size": len(images),
                "overflow_fix": "NNCF default (first_layer: 7-bit weights of the first convolution)",
                "fast_bias_correction": True}
    return {"quantizer": "nncf", "quantizer_version": nncf.__version__, "settings": settings,
            "quant_format": "QDQ", "per_channel": True, "per_channel_activations": False,
            "activation_type": activations, "weight_type": "int8",
            "symmetric_activations": activations == "int8", "tensorrt_compatible": False,
            "float_layers": kept, "weighted_layers": weighted_layers(quantized), **details,
            "calibration": {"method": "minmax (NNCF)", "images": len(images), "split": "train"},
            "calibrated_on": env.isa_facts()}


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
