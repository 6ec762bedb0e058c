"""The deployment registry: how each runtime backend is deployed (a bundle's runtime, its settings, its Triton
platform). A backend without an entry (torch) is not deployable: a bundle carries a graph or an engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from segdeploy.core.registry import Registry
from segdeploy.runtime.variants import Variant


@dataclass(frozen=True)
class DeployTarget:
    # The Python package the bundle's predict.py imports (None: no standalone predictor, e.g. TensorRT)
    runtime: str | None
    # Runtime settings the variant was measured with (threads, providers, hints): manifest.json, predict.py
    settings: Callable[[Variant, int | None], dict[str, Any]]
    triton_model_file: str  # <name>/1/<file> in a Triton model repository
    triton_fields: dict[str, str] = field(default_factory=dict)  # platform or backend (+ default_model_filename)
    # Triton `parameters` from the runtime settings (thread counts, hints), string values
    triton_parameters: Callable[[dict[str, Any]], dict[str, str]] = lambda settings: {}
    description: str = ""


TARGETS: Registry[DeployTarget] = Registry("deploy target")


def is_deployable(backend: str) -> bool:
    return backend in TARGETS


def _ort_settings(variant: Variant, threads: int | None) -> dict[str, Any]:
    from segdeploy.runtime.ort_runner import EXECUTION_PROVIDERS

    provider = EXECUTION_PROVIDERS[variant.option("provider", "cpu")].name
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    return {"providers": providers, "intra_op_num_threads": threads, "inter_op_num_threads": 1 if threads else None}


def _ort_triton(settings: dict[str, Any]) -> dict[str, str]:
    threads = settings.get("intra_op_num_threads")
    return {"intra_op_thread_count": str(threads), "inter_op_thread_count": "1"} if threads else {}


def _openvino_settings(variant: Variant, threads: int | None) -> dict[str, Any]:
    from segdeploy.runtime.openvino_runner import compile_config

    config = compile_config(variant.option("inference_precision", "f32"), variant.option("hint", "latency"), threads)
    return {"device": "CPU", "properties": config}


TARGETS.register("onnxruntime", DeployTarget(
    runtime="onnxruntime", settings=_ort_settings, triton_model_file="model.onnx",
    triton_fields={"platform": "onnxruntime_onnx"}, triton_parameters=_ort_triton,
    description="ONNX Runtime on the graph"))
TARGETS.register("openvino", DeployTarget(
    runtime="openvino", settings=_openvino_settings, triton_model_file="model.onnx",
    triton_fields={"backend": "openvino", "default_model_filename": "model.onnx"},
    triton_parameters=lambda settings: dict(settings["properties"]),
    description="OpenVINO (CPU) on the graph"))
TARGETS.register("tensorrt", DeployTarget(
    runtime=None, settings=lambda variant, threads: {"cuda_graph": bool(variant.option("cuda_graph"))},
    triton_model_file="model.plan", triton_fields={"platform": "tensorrt_plan"},
    description="TensorRT engine (serve it with Triton; no standalone predictor)"))
