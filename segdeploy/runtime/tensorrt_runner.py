"""The TensorRT runner: torch owns the CUDA memory and streams; TensorRT reads and writes torch tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdeploy.core import fileio
from segdeploy.core.errors import BackendUnavailable, ConfigError, SegdeployError
from segdeploy.core.rundir import RunDir
from segdeploy.engines.tensorrt import (check_batch, check_manifest, engine_path, gpu_identity, import_tensorrt,
                                        manifest_path)
from segdeploy.runtime.base import Runner


class TensorRTRunner(Runner):
    """torch owns the CUDA memory; TensorRT reads and writes it through tensor addresses."""

    name = "tensorrt"
    supports_cuda_graph = True

    def __init__(self, engine_file: Path, precision: str = "fp32", device: str = "cuda"):
        trt = import_tensorrt()
        import torch

        if not device.startswith("cuda"):
            raise ConfigError("the tensorrt backend runs on a GPU: pass --device cuda")
        if not torch.cuda.is_available():
            raise BackendUnavailable("the tensorrt backend needs a CUDA GPU, and torch sees none")
        super().__init__(precision, device)
        self.torch = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if self.engine is None:
            raise SegdeployError(f"TensorRT cannot deserialise {engine_file} (built by another TensorRT version?)",
                                 hint="rebuild it with `segdeploy export RUN --trt --rebuild`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise SegdeployError(f"{engine_file}: expected one input and one output, got {inputs} -> {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        self.input_dtype = dtypes[self.engine.get_tensor_dtype(self.input_name)]
        self.output_dtype = dtypes[self.engine.get_tensor_dtype(self.output_name)]
        lo, opt, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.profile = {"min": list(lo), "opt": list(opt), "max": list(hi)}
        self.stream = torch.cuda.Stream(device=device)  # TensorRT warns on (and serialises) the default stream
        self.cuda_stream = self.stream  # where CudaGraphRunner captures execute_async_v3

    def prepare(self, images: np.ndarray):
        """Copy the batch to the GPU, allocate the output and bind both: `run` then only enqueues, so a
        timed region never allocates and CUDA graphs can capture it (the bench harness's hook). The
        context holds one binding at a time: run a prepared batch before preparing the next."""
        check_batch(images.shape, self.profile)
        torch = self.torch
        inputs = torch.from_numpy(images).to(self.device, self.input_dtype).contiguous()
        if not self.context.set_input_shape(self.input_name, tuple(inputs.shape)):
            raise SegdeployError(f"TensorRT refused input shape {list(inputs.shape)} (profile {self.profile})")
        output = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)),
                             dtype=self.output_dtype, device=self.device)
        self.context.set_tensor_address(self.input_name, inputs.data_ptr())
        self.context.set_tensor_address(self.output_name, output.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the copy and allocation ran there
        for tensor in (inputs, output):  # freed early by a caller, they stay reserved until TensorRT is done
            tensor.record_stream(self.stream)
        return inputs, output

    def run(self, prepared):
        inputs, output = prepared
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise SegdeployError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        return output

    def synchronize(self) -> None:
        self.stream.synchronize()

    def to_numpy(self, output) -> np.ndarray:
        return output.float().cpu().numpy()


def load_tensorrt(run: RunDir, precision: str = "fp32", device: str = "cuda") -> Runner:
    """The engine for `precision`, after checking its manifest against this GPU, TensorRT and graph."""
    trt = import_tensorrt()
    engine = run.require(engine_path(run, precision), f"export --trt --precision {precision}")
    manifest_file = run.require(manifest_path(run, precision), f"export --trt --precision {precision} --rebuild")
    manifest = fileio.read_json(manifest_file)
    here = {**gpu_identity(device), "tensorrt_version": trt.__version__}
    keys = ("tensorrt_version", "gpu_name", "compute_capability")
    onnx_file = run.onnx_path(precision)
    if onnx_file.is_file():  # the graph was re-exported since the engine was built
        here["onnx_sha256"] = fileio.sha256_file(onnx_file)
        keys += ("onnx_sha256",)
    check_manifest(engine, manifest, {**manifest, **here}, keys)
    return TensorRTRunner(engine, precision=precision, device=device)
