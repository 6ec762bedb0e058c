"""PyTorch eager / autocast / channels_last / torch.compile, all on torch's current stream."""

from __future__ import annotations

import contextlib

import numpy as np

from segdeploy.core.errors import SegdeployError
from segdeploy.runtime.base import Runner


class TorchRunner(Runner):
    """`precision` is the arithmetic: fp32 (TF32 off on CUDA unless `tf32`), or fp16/bf16 autocast."""

    name = "torch"
    stream_ordered = True
    supports_cuda_graph = True

    def __init__(self, model, device: str = "cpu", precision: str = "fp32", channels_last: bool = False,
                 compile_mode: str | None = None, tf32: bool = False,
                 input_chw: tuple[int, int, int] | None = None):
        import torch

        super().__init__(precision, device)
        self.torch = torch
        self.model = model.to(device).eval()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if compile_mode:
            self.model = torch.compile(self.model, mode=compile_mode)
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.device_type = "cuda" if device.startswith("cuda") else "cpu"
        self.tf32 = tf32
        self.input_chw = input_chw  # the run's input size: anything else is a user error, not a torch traceback

    def prepare(self, images: np.ndarray):
        if self.input_chw and (images.ndim != 4 or tuple(images.shape[1:]) != self.input_chw):
            raise SegdeployError(f"torch model expects input [batch, {', '.join(map(str, self.input_chw))}], "
                                 f"got {list(images.shape)}")
        return self.torch.from_numpy(images).to(self.device).contiguous(memory_format=self.memory_format)

    def _numerics(self):
        """Autocast for fp16/bf16; for fp32 on CUDA, cuDNN's TF32 convolutions off (FP32 means FP32)."""
        torch = self.torch
        if self.autocast_dtype is not None:
            # cache_enabled=False: autocast's weight cast cache must not outlive a CUDA graph capture
            return torch.autocast(self.device_type, dtype=self.autocast_dtype, cache_enabled=False)
        if self.device_type == "cuda":
            return torch.backends.cudnn.flags(enabled=True, benchmark=torch.backends.cudnn.benchmark,
                                              deterministic=torch.backends.cudnn.deterministic,
                                              allow_tf32=self.tf32)
        return contextlib.nullcontext()

    def run(self, prepared):
        with self.torch.inference_mode(), self._numerics():
            return self.model(prepared)

    def synchronize(self) -> None:
        if self.device_type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def to_numpy(self, output) -> np.ndarray:
        return output.float().cpu().numpy()

    def release(self) -> None:
        """Wait for the device, then drop the model (and its compiled form): its weights are freed now."""
        self.synchronize()
        self.model = None
