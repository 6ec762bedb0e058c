"""OpenVINO on the CPU, reading the exported ONNX graphs directly (no conversion step).

The inference precision is explicit (`INFERENCE_PRECISION_HINT`): f32 unless the variant asks for bf16,
because OpenVINO's default on CPUs with BF16 support is bf16, and FP32 must mean FP32. A latency hint
runs one synchronous request per batch; a throughput hint splits the batch over OpenVINO's optimal number
of infer requests: `run` starts them (`start_async`), `synchronize` waits for all. No Python callback is
involved: with an AsyncInferQueue callback, releasing the compiled model deadlocked one run in a few (its
worker thread waited for the GIL that the releasing thread held while joining it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdeploy.core.errors import BackendUnavailable, SegdeployError
from segdeploy.runtime.base import DEPLOY_FORMATS, Runner

INFERENCE_PRECISIONS = {"f32": "f32", "bf16": "bf16"}
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def compile_config(inference_precision: str, hint: str, threads: int | None,
                   cache_dir: Path | None = None) -> dict[str, str]:
    """The CPU plugin properties a runner compiles with (the bare benchmark loop uses the same)."""
    config = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISIONS[inference_precision],
              "PERFORMANCE_HINT": HINTS[hint]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return config


class OpenVinoRunner(Runner):
    """One compiled model on the CPU; host arrays in, host arrays out."""

    name = "openvino"

    def __init__(self, onnx_path: Path, precision: str, inference_precision: str = "f32",
                 hint: str = "latency", threads: int | None = None, cache_root: Path | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailable("openvino is not installed: pip install 'segdeploy[openvino]'") from None
        super().__init__(precision, "cpu")
        self.ov = ov
        self.hint = hint
        cache_dir = None
        if cache_root is not None:
            # One folder per setting: OpenVINO names a graph's blob after the file alone, so settings that
            # shared a folder would overwrite each other's blob on every switch.
            cache_dir = cache_root / f"{inference_precision}-{hint}-threads{threads or 'auto'}"
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError:  # a read-only run directory: compile every time, results are the same
                cache_dir = None
        config = compile_config(inference_precision, hint, threads, cache_dir)
        try:
            # From the path, so that a cache hit skips reading the ONNX file (OpenVINO keys the cache on
            # the file's path, size and modification time, so a re-exported graph is compiled again).
            self.compiled = ov.Core().compile_model(str(onnx_path), "CPU", config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses for any bad file
            raise SegdeployError(f"openvino cannot load {onnx_path}: {_first_line(exc)}") from None
        self.input_shape = self.compiled.input(0).get_partial_shape()
        self.input_dtype = np.float32
        if self.compiled.input(0).get_element_type() == ov.Type.u8:  # a deploy graph: uint8 NHWC in, mask out
            self.input_format, self.output_format = DEPLOY_FORMATS
            self.input_dtype = np.uint8
        self.properties = {key: str(self.compiled.get_property(key)) for key in (
            "INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS",
            "OPTIMAL_NUMBER_OF_INFER_REQUESTS")}
        if hint == "throughput":
            count = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self.requests = [self.compiled.create_infer_request() for _ in range(max(count, 1))]
            self.pending: list = []
        else:
            self.request = self.compiled.create_infer_request()

    def prepare(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or not self.input_shape.compatible(self.ov.PartialShape(list(images.shape))):
            raise SegdeployError(f"openvino model expects input shape {self.input_shape}, got "
                                 f"{list(images.shape)}; re-export at this size")
        return np.ascontiguousarray(images, dtype=self.input_dtype)

    def run(self, prepared: np.ndarray) -> np.ndarray:
        if self.hint == "latency":
            self.request.infer({0: prepared}, share_inputs=True, share_outputs=True)
            return self.request.get_output_tensor(0).data  # the request's buffer: to_numpy copies it
        chunks = np.array_split(np.arange(len(prepared)), min(len(self.requests), len(prepared)))
        self.pending = self.requests[:len(chunks)]
        for request, chunk in zip(self.pending, chunks):
            request.start_async({0: prepared[chunk[0]:chunk[-1] + 1]}, share_inputs=True)
        return self.pending  # the requests in batch order; their outputs are complete after synchronize()

    def synchronize(self) -> None:
        if self.hint == "throughput":
            for request in self.pending:
                request.wait()

    def close(self) -> None:
        """Finish every request, then release requests and compiled model now rather than at some later
        garbage collection."""
        self.synchronize()
        for name in ("pending", "requests", "request", "compiled"):
            self.__dict__.pop(name, None)

    def row_info(self) -> dict:
        """What the runtime compiled with (precision, hint, streams, requests) for a benchmark row."""
        return {"runtime_properties": self.properties}

    def to_numpy(self, output) -> np.ndarray:
        if isinstance(output, list):
            return np.concatenate([request.get_output_tensor(0).data for request in output])
        return np.array(output, dtype=np.float32 if self.output_format == "logits" else None)
