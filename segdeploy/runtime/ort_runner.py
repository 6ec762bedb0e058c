"""ONNX Runtime: execution providers on host arrays (CPU, OpenVINO), the CUDA/TensorRT providers with
IOBinding on torch CUDA buffers.

What differs between execution providers is a field of their entry in EXECUTION_PROVIDERS: ONNX Runtime's
name, where the session computes (host arrays, or CUDA buffers through IOBinding), the package that
brings it and the provider options. The `onnxruntime` backend's modifiers (runtime/backends.py) pick one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from segdeploy.core.errors import BackendUnavailable, SegdeployError, first_line
from segdeploy.runtime.base import DEPLOY_FORMATS, Runner


@dataclass(frozen=True)
class SessionSettings:
    """What provider options may depend on."""

    onnx_path: Path
    precision: str
    device_id: int = 0
    stream: str | None = None  # torch's current CUDA stream, for CUDA providers


@dataclass(frozen=True)
class ExecutionProvider:
    name: str  # ONNX Runtime's name, e.g. CUDAExecutionProvider
    on_cuda: bool = False  # IOBinding on torch CUDA buffers (needs --device cuda); else host arrays on the CPU
    install: str = "pip install onnxruntime"  # what brings a build that has it
    in_every_build: bool = False  # no need to ask the installed build (the CPU provider)
    # (provider, options) pairs in priority order; ONNX Runtime falls back along them
    providers: Callable[[SessionSettings], list] = lambda s: []

    def session_providers(self, settings: SessionSettings) -> list:
        return self.providers(settings) or [self.name]


def _cuda_options(s: SessionSettings) -> dict:
    return {"device_id": str(s.device_id), "user_compute_stream": s.stream}


def _tensorrt_providers(s: SessionSettings) -> list:
    trt = {**_cuda_options(s), "trt_fp16_enable": str(s.precision == "fp16"), "trt_engine_cache_enable": "True",
           "trt_engine_cache_path": str(Path(s.onnx_path).parent / "ort_trt_cache")}
    return [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", _cuda_options(s))]


EXECUTION_PROVIDERS = {
    "cpu": ExecutionProvider("CPUExecutionProvider", in_every_build=True),
    "cuda": ExecutionProvider("CUDAExecutionProvider", on_cuda=True, install="pip install 'segdeploy[gpu]'",
                              providers=lambda s: [("CUDAExecutionProvider", _cuda_options(s))]),
    "trt": ExecutionProvider("TensorrtExecutionProvider", on_cuda=True, install="pip install 'segdeploy[gpu]'",
                             providers=_tensorrt_providers),
    # OpenVINO through ONNX Runtime (the onnxruntime-openvino build, which replaces the plain onnxruntime
    # package); the CPU provider stays as the fallback for operators it does not take.
    "openvino": ExecutionProvider("OpenVINOExecutionProvider", install="pip install onnxruntime-openvino (instead of onnxruntime)",
                                  providers=lambda s: [("OpenVINOExecutionProvider", {"device_type": "CPU", "precision": "FP32"}),
                                                       "CPUExecutionProvider"]),
}


def provider_missing(provider: ExecutionProvider) -> str | None:
    """Why this onnxruntime build cannot run `provider` (None: it can)."""
    if provider.in_every_build:
        return None
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider.name in available:
        return None
    return f"{provider.name} not in this onnxruntime build (has {', '.join(available)}; {provider.install})"


def _check_in_use(session, provider: ExecutionProvider) -> list[str]:
    """ONNX Runtime silently falls back to the CPU provider when the one asked for fails to load."""
    in_use = session.get_providers()
    if not in_use or in_use[0] != provider.name:
        raise BackendUnavailable(f"asked onnxruntime for {provider.name}, session uses {in_use}")
    return in_use


class OnnxRuntimeRunner(Runner):
    """An execution provider on host arrays (the CPU provider by default)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, precision: str = "fp32", threads: int | None = None,
                 provider: ExecutionProvider = EXECUTION_PROVIDERS["cpu"]):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from None
        super().__init__(precision, "cpu")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(onnx_path), options,
                                                providers=provider.session_providers(SessionSettings(onnx_path, precision)))
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types for a bad file
            raise SegdeployError(f"onnxruntime cannot load {onnx_path}: {first_line(exc)}") from None
        self.providers_in_use = _check_in_use(self.session, provider)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = model_input.shape  # e.g. ['batch', 3, 256, 256]
        self.input_dtype = {"tensor(float16)": np.float16, "tensor(uint8)": np.uint8}.get(model_input.type, np.float32)
        if self.input_dtype == np.uint8:  # a deploy graph: uint8 NHWC images in, mask out
            self.input_format, self.output_format = DEPLOY_FORMATS
        self.output_name = self.session.get_outputs()[0].name

    def prepare(self, images: np.ndarray):
        static = [d if isinstance(d, int) else None for d in self.input_shape]
        for axis, (want, got) in enumerate(zip(static, images.shape)):
            if want is not None and want != got:
                raise SegdeployError(
                    f"onnxruntime model expects input shape {self.input_shape}, got {list(images.shape)} "
                    f"(axis {axis}); re-export at this size"
                )
        return images.astype(self.input_dtype, copy=False)

    def run(self, prepared):
        return self.session.run([self.output_name], {self.input_name: prepared})[0]

    def release(self) -> None:
        """`run` is synchronous: nothing is in flight; the session (and its arena) goes now."""
        self.session = None


class OrtIOBindingRunner(Runner):
    """ONNX Runtime CUDA/TensorRT execution provider with IOBinding on torch CUDA buffers.

    The session runs on torch's current stream (`user_compute_stream`), input and output live in torch
    tensors bound by pointer, so nothing is copied between host and device inside `run`.
    """

    name = "onnxruntime"
    stream_ordered = False

    def __init__(self, onnx_path: Path, provider: ExecutionProvider, precision: str, device: str,
                 threads: int | None = None):
        import onnxruntime as ort
        import torch

        super().__init__(precision, device)
        self.torch = torch
        self.device_id = torch.device(device).index or 0
        torch.cuda.set_device(self.device_id)
        settings = SessionSettings(onnx_path, precision, self.device_id, str(torch.cuda.current_stream().cuda_stream))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=provider.session_providers(settings))
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
            raise BackendUnavailable(f"onnxruntime cannot create a {provider.name} session: {first_line(exc)}") from None
        self.providers_in_use = _check_in_use(self.session, provider)
        model_input = self.session.get_inputs()[0]
        model_output = self.session.get_outputs()[0]
        self.input_name, self.output_name = model_input.name, model_output.name
        self.input_dtype = torch.float16 if "float16" in model_input.type else torch.float32
        self.output_dtype = torch.float16 if "float16" in model_output.type else torch.float32
        self.output_shape = model_output.shape

    def prepare(self, images: np.ndarray):
        torch = self.torch
        images_t = torch.from_numpy(images).to(self.device).to(self.input_dtype).contiguous()
        shape = [images.shape[0]] + [d if isinstance(d, int) else s
                                     for d, s in zip(self.output_shape[1:], images.shape[1:])]
        output = torch.empty(shape, dtype=self.output_dtype, device=self.device)
        binding = self.session.io_binding()
        to_np = {torch.float32: np.float32, torch.float16: np.float16}
        binding.bind_input(self.input_name, "cuda", self.device_id, to_np[self.input_dtype],
                           tuple(images_t.shape), images_t.data_ptr())
        binding.bind_output(self.output_name, "cuda", self.device_id, to_np[self.output_dtype],
                            tuple(output.shape), output.data_ptr())
        return binding, images_t, output

    def run(self, prepared):
        binding, _, output = prepared
        self.session.run_with_iobinding(binding)
        return output

    def synchronize(self) -> None:
        self.torch.cuda.synchronize(self.device)

    def to_numpy(self, output) -> np.ndarray:
        return output.float().cpu().numpy()

    def release(self) -> None:
        """Wait for the device (bindings point into torch tensors still in flight), then drop the session."""
        self.synchronize()
        self.session = None

