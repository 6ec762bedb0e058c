"""The TensorRT runner: torch owns the CUDA memory and the streams; TensorRT reads and writes torch tensors.

Stream order (as Torch-TensorRT's Python runtime module does it): TensorRT enqueues on its own stream
(TensorRT warns on, and serialises, the legacy default stream), which first waits on torch's current
stream (the input copy happened there) and which torch's current stream waits on afterwards. So a
device-to-host copy on torch's stream (`to_numpy`, `--include-transfer`) never races the engine, and CUDA
events recorded on torch's stream around `run` bracket the engine's work on the device (`stream_ordered`),
the same measurement as for the torch rows. NOT EXECUTED in this project (no TensorRT on its machines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segdeploy.core import fileio
from segdeploy.core.errors import SegdeployError
from segdeploy.core.rundir import RunDir
from segdeploy.engines.tensorrt import (LOAD_KEYS, check_manifest, engine_path, import_tensorrt, manifest_path,
                                        profile_for, select_gpu)
from segdeploy.runtime.base import DEPLOY_FORMATS, Runner

# TensorRT I/O data type (trt.DataType member name) -> torch dtype name; others are refused in one line.
# UINT8 in and UINT8/INT32 out: a deploy graph's images and mask (export/deploy_graph.py).
IO_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "UINT8": "uint8", "INT32": "int32"}


def torch_dtype(trt_dtype_name: str, tensor: str, engine_file: Path):
    """The torch dtype for an engine I/O tensor, or a one-line error naming the type and what to do."""
    import torch

    if trt_dtype_name not in IO_DTYPES:
        raise SegdeployError(f"{engine_file}: {tensor} is {trt_dtype_name}; segdeploy feeds and reads "
                             f"{', '.join(IO_DTYPES)} tensors", hint="export the graph with float input and output, or "
                                                                     "--deploy (INT8 belongs inside the graph, as Q/DQ)")
    return getattr(torch, IO_DTYPES[trt_dtype_name])


class TensorRTRunner(Runner):
    """One engine, one execution context; `prepare` binds torch buffers, `run` only enqueues."""

    name = "tensorrt"
    supports_cuda_graph = True
    stream_ordered = True  # ordered with torch's current stream through the waits in `run`

    def __init__(self, engine_file: Path, precision: str = "fp32", device: str = "cuda"):
        trt = import_tensorrt()
        import torch

        select_gpu(device)  # deserialise, allocate and enqueue on the GPU the buffers live on
        super().__init__(precision, device)
        self.engine_file = engine_file
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if self.engine is None:
            raise SegdeployError(f"TensorRT cannot deserialise {engine_file} (built by another TensorRT version?)",
                                 hint=f"rebuild it with `segdeploy export {engine_file.parent.parent} --trt "
                                      f"--precision {precision} --rebuild`")
        # The default (static) allocation: activation memory for the largest profile, at one address for the
        # context's life, so CUDA graphs captured for one profile stay valid after a switch to another.
        # Rows report the engine's own need for the profile in use next to the device figures (row_info).
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise SegdeployError(f"TensorRT could not create an execution context for {engine_file} "
                                 "(out of device memory? see the TensorRT log above)")
        self.torch = torch
        self._bind_io_tensors(trt)
        self.stream = torch.cuda.Stream(device=device)
        self.cuda_stream = self.stream  # where CudaGraphRunner captures execute_async_v3
        self.profile_index: int | None = None
        self.batch: int | None = None

    def _bind_io_tensors(self, trt) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs or (len(outputs) > 1 and "mask" not in outputs):
            raise SegdeployError(f"{self.engine_file}: expected one input and one output (a deploy graph: mask, "
                                 f"optionally probs), got {inputs} -> {outputs}")
        self.input_name = inputs[0]
        self.output_name = "mask" if "mask" in outputs else outputs[0]
        self.output_names = [self.output_name, *[n for n in outputs if n != self.output_name]]
        self.input_dtype = torch_dtype(self.engine.get_tensor_dtype(self.input_name).name, "input", self.engine_file)
        self.output_dtypes = [torch_dtype(self.engine.get_tensor_dtype(n).name, "output", self.engine_file)
                              for n in self.output_names]
        if self.input_dtype == self.torch.uint8:  # a deploy graph: uint8 NHWC images in, mask out
            self.input_format, self.output_format = DEPLOY_FORMATS
        self.profiles = []
        for k in range(self.engine.num_optimization_profiles):
            lo, opt, hi = self.engine.get_tensor_profile_shape(self.input_name, k)
            self.profiles.append({"min": list(lo), "opt": list(opt), "max": list(hi)})

    def prepare(self, images: np.ndarray):
        """Copy the batch to the GPU, pick the batch's profile, allocate the output and bind both: `run` then
        only enqueues, so a timed region never allocates and CUDA graphs can capture it. The context holds
        one binding at a time: run a prepared batch before preparing the next."""
        index = profile_for(images.shape, self.profiles, self.engine_file)
        torch = self.torch
        inputs = torch.from_numpy(images).to(self.device, self.input_dtype).contiguous()
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the copy and allocation ran there
        if index != self.profile_index:
            if not self.context.set_optimization_profile_async(index, self.stream.cuda_stream):
                raise SegdeployError(f"TensorRT refused optimisation profile {index} ({self.profiles[index]})")
            self.profile_index = index
        if not self.context.set_input_shape(self.input_name, tuple(inputs.shape)):
            raise SegdeployError(f"TensorRT refused input shape {list(inputs.shape)} (profile {self.profiles[index]})")
        outputs = [torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device=self.device)
                   for name, dtype in zip(self.output_names, self.output_dtypes)]  # every output needs a buffer
        self.context.set_tensor_address(self.input_name, inputs.data_ptr())
        for name, tensor in zip(self.output_names, outputs):
            self.context.set_tensor_address(name, tensor.data_ptr())
        for tensor in (inputs, *outputs):  # freed early by a caller, they stay reserved until TensorRT is done
            tensor.record_stream(self.stream)
        self.batch = int(images.shape[0])
        return inputs, outputs[0], outputs[1:]

    def input_buffer(self, prepared) -> Any:
        """The device tensor `run(prepared)` reads: what a CUDA graph replay reads, refilled in place."""
        return prepared[0]

    def run(self, prepared):
        _, output, _ = prepared
        current = self.torch.cuda.current_stream(self.device)
        if current != self.stream:  # while a CUDA graph is captured, they are the same stream
            self.stream.wait_stream(current)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise SegdeployError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        if current != self.stream:
            current.wait_stream(self.stream)
        return output

    def synchronize(self) -> None:
        self.stream.synchronize()
        self.torch.cuda.current_stream(self.device).synchronize()

    def to_numpy(self, output) -> np.ndarray:
        if self.output_format == "mask":
            return output.cpu().numpy()
        return output.float().cpu().numpy()  # on torch's stream, which waits on the engine (see `run`)

    def row_info(self) -> dict:
        """The profile the last prepared batch ran with and the engine's own device memory for it."""
        if self.profile_index is None:
            return {}
        profile = self.profiles[self.profile_index]
        activations = _call(self.engine, "get_device_memory_size_for_profile_v2", self.profile_index)
        weights = _engine_weights_bytes(self.engine)
        info = {"tensorrt_profile": profile, "opt_batch": profile["opt"][0],
                "tuned_for_batch": profile["opt"][0] == self.batch}
        if activations is not None:
            info["engine_memory_mb"] = (activations + (weights or 0)) / 2**20
            info["engine_memory_kind"] = ("tensorrt_activations_for_profile_plus_weights" if weights is not None
                                          else "tensorrt_activations_for_profile (weights not reported)")
        return info


def _call(obj: Any, method: str, *args) -> Any:
    function = getattr(obj, method, None)
    return function(*args) if function is not None else None


def _engine_weights_bytes(engine) -> int | None:
    import tensorrt as trt

    stat = getattr(getattr(trt, "EngineStat", None), "TOTAL_WEIGHTS_SIZE", None)
    return _call(engine, "get_engine_stat", stat) if stat is not None else None


def load_tensorrt(run: RunDir, precision: str = "fp32", device: str = "cuda", deploy: bool = False) -> Runner:
    """The engine for `precision` (of its deploy graph with `deploy`), after checking its manifest against
    this GPU, TensorRT and graph."""
    trt = import_tensorrt()
    command = f"export --trt --precision {precision}{' --deploy' if deploy else ''}"
    engine = run.require(engine_path(run, precision, deploy), command)
    manifest_file = run.require(manifest_path(run, precision, deploy), f"{command} --rebuild")
    manifest = fileio.read_json(manifest_file)
    here = {**select_gpu(device), "tensorrt_version": trt.__version__}
    here["engine_sha256"] = fileio.sha256_cached(engine)  # the engine file is the one the manifest describes
    keys = ("engine_sha256", *LOAD_KEYS)
    onnx_file = run.onnx_path(precision, deploy)
    if onnx_file.is_file():  # the graph was re-exported since the engine was built
        here["onnx_sha256"] = fileio.sha256_file(onnx_file)
        keys += ("onnx_sha256",)
    check_manifest(engine, manifest, {**manifest, **here}, keys)
    return TensorRTRunner(engine, precision=precision, device=device)
