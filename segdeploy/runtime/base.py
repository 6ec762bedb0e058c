"""The one runner interface, so eval, parity and bench compare models, not pipelines.

A runner takes normalised float32 NCHW images (see `data.preprocess.normalize`) and returns logits NCHW,
unless it runs a deploy graph (export/deploy_graph.py): then `input_format` is "uint8_nhwc" (the resized
uint8 RGB images as the dataset holds them) and `output_format` "mask" (class indices N x H x W).
`infer_images` feeds either kind from the same uint8 batch.
`prepare` puts a batch where the backend reads it (once, outside any timed region), `run` computes
(and may return before the device is done), `synchronize` waits for the device, `to_numpy` brings an
output back to the host. Runners that can be captured in a CUDA graph set `supports_cuda_graph` (see
runtime/cuda_graph.py); `stream_ordered` runners enqueue all work on torch's current CUDA stream.

Lifecycle: a runner is a context manager (`with build_runner(...) as runner:`). `close()` (or the end of
the `with` block) waits for the runner's work and frees what it holds (sessions, compiled models, engines,
CUDA graphs) now, in the order its `release()` gives, instead of at some later garbage collection; it is
idempotent. A closed runner refuses `prepare`, `run` and `infer` with RunnerClosedError.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import numpy as np

from segdeploy.core.errors import RunnerClosedError


def _refused_when_closed(method: Callable) -> Callable:
    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        if self.closed:
            raise RunnerClosedError(f"runner {self.name} is closed: build a new one (a runner is used inside its "
                                    "`with` block, or until close())")
        return method(self, *args, **kwargs)

    checked.refuses_when_closed = True
    return checked


DEPLOY_FORMATS = ("uint8_nhwc", "mask")  # (input_format, output_format) of a runner on a deploy graph


class Runner:
    name = "base"
    input_format = "normalized"  # float32 NCHW from preprocess.normalize | "uint8_nhwc" (deploy graphs)
    output_format = "logits"  # float32 NCHW | "mask" (class indices N x H x W, uint8 or int32)
    stream_ordered = False
    supports_cuda_graph = False
    closed = False

    def __init_subclass__(cls, **kwargs):
        """Every runner's own `prepare` and `run` refuse work once it is closed (one attribute test a call)."""
        super().__init_subclass__(**kwargs)
        for method_name in ("prepare", "run"):
            method = cls.__dict__.get(method_name)
            if method is not None and not getattr(method, "refuses_when_closed", False):
                setattr(cls, method_name, _refused_when_closed(method))

    def __init__(self, precision: str, device: str):
        self.precision = precision
        self.device = device

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @_refused_when_closed
    def prepare(self, images: np.ndarray) -> Any:
        return images

    @_refused_when_closed
    def run(self, prepared: Any) -> Any:
        raise NotImplementedError

    def synchronize(self) -> None:
        pass

    def to_numpy(self, output: Any) -> np.ndarray:
        return np.asarray(output)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Logits of a normalised float batch, or the mask of a uint8 NHWC batch for a deploy-graph runner."""
        dtype = np.uint8 if self.input_format == "uint8_nhwc" else np.float32
        output = self.run(self.prepare(np.ascontiguousarray(images, dtype=dtype)))
        self.synchronize()
        output = self.to_numpy(output)
        return output if self.output_format == "mask" else output.astype(np.float32, copy=False)

    def close(self) -> None:
        """Release what the runner holds, once; later calls do nothing. An error of `release` is raised
        (the runner counts as closed all the same)."""
        if self.closed:
            return
        self.closed = True
        self.release()

    def release(self) -> None:
        """Wait for the runner's work, then drop its native objects in the order the backend needs."""

    def input_buffer(self, prepared: Any) -> Any:
        """The device tensor `run(prepared)` reads (a CUDA graph replay reads it; a new batch is copied in)."""
        return prepared

    def row_info(self) -> dict:
        """Facts about the last run for a benchmark row (e.g. TensorRT profile and engine memory)."""
        return {}


def infer_images(runner: Runner, images: np.ndarray, normalized: np.ndarray | None = None) -> np.ndarray:
    """uint8 N x H x W x 3 RGB images at the model size -> the runner's output: logits NCHW float32, or
    the mask N x H x W of a deploy graph. Plain runners get the shared `normalize` (or `normalized`, the
    same batch already normalised); deploy runners get the uint8 batch itself."""
    if runner.input_format == "uint8_nhwc":
        return runner.infer(images)
    if normalized is None:
        from segdeploy.data.preprocess import normalize

        normalized = normalize(images)
    return runner.infer(normalized)


def predicted_labels(runner: Runner, output: np.ndarray) -> np.ndarray:
    """Class indices N x H x W from what `infer_images` returned (argmax over classes of logits)."""
    return output if runner.output_format == "mask" else output.argmax(1)


def iterate_outputs(runner: Runner, dataset, batch_size: int = 8) -> Iterator[tuple[range, np.ndarray]]:
    """The runner's output for every image of a dataset, batch by batch, from the dataset's uint8 images."""
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        yield indices, infer_images(runner, dataset.image_batch(indices))
