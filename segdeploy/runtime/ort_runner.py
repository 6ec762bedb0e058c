"""ONNX Runtime: the CPU execution provider on host arrays, the CUDA/TensorRT providers with IOBinding on
torch CUDA buffers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdeploy.core.errors import BackendUnavailable, SegdeployError
from segdeploy.runtime.base import DEPLOY_FORMATS, Runner

ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "trt": "TensorrtExecutionProvider"}


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class OnnxRuntimeRunner(Runner):
    """The CPU execution provider on host arrays."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, precision: str = "fp32", threads: int | None = None):
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
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types for a bad file
            raise SegdeployError(f"onnxruntime cannot load {onnx_path}: {_first_line(exc)}") from None
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


class OrtIOBindingRunner(Runner):
    """ONNX Runtime CUDA/TensorRT execution provider with IOBinding on torch CUDA buffers.

    The session runs on torch's current stream (`user_compute_stream`), input and output live in torch
    tensors bound by pointer, so nothing is copied between host and device inside `run`.
    """

    name = "onnxruntime"
    stream_ordered = False

    def __init__(self, onnx_path: Path, provider: str, precision: str, device: str, threads: int | None = None):
        import onnxruntime as ort
        import torch

        super().__init__(precision, device)
        self.torch = torch
        self.device_id = torch.device(device).index or 0
        torch.cuda.set_device(self.device_id)
        stream = str(torch.cuda.current_stream().cuda_stream)
        cuda_options = {"device_id": str(self.device_id), "user_compute_stream": stream}
        requested = ORT_PROVIDERS[provider]
        if provider == "trt":
            trt_options = {"device_id": str(self.device_id), "user_compute_stream": stream,
                           "trt_fp16_enable": str(precision == "fp16"),
                           "trt_engine_cache_enable": "True",
                           "trt_engine_cache_path": str(Path(onnx_path).parent / "ort_trt_cache")}
            providers = [(requested, trt_options), ("CUDAExecutionProvider", cuda_options)]
        else:
            providers = [(requested, cuda_options)]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
            raise BackendUnavailable(f"onnxruntime cannot create a {requested} session: {_first_line(exc)}") from None
        in_use = self.session.get_providers()
        # ORT silently falls back to the CPU provider when the one asked for fails to load.
        if not in_use or in_use[0] != requested:
            raise BackendUnavailable(f"asked onnxruntime for {requested}, session uses {in_use}")
        self.providers_in_use = in_use
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

