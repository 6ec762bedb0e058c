"""The one runner interface, so eval, parity and bench compare models, not pipelines.

A runner takes normalised float32 NCHW images (see `data.preprocess.normalize`) and returns logits NCHW,
unless it runs a deploy graph (export/deploy_graph.py): then `input_format` is "uint8_nhwc" (the resized
uint8 RGB images as the dataset holds them) and `output_format` "mask" (class indices N x H x W).
`infer_images` feeds either kind from the same uint8 batch.
`prepare` puts a batch where the backend reads it (once, outside any timed region), `run` computes
(and may return before the device is done), `synchronize` waits for the device, `to_numpy` brings an
output back to the host. Runners that can be captured in a CUDA graph set `supports_cuda_graph` (see
runtime/cuda_graph.py); `stream_ordered` runners enqueue all work on torch's current CUDA stream.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np


DEPLOY_FORMATS = ("uint8_nhwc", "mask")  # (input_format, output_format) of a runner on a deploy graph


class Runner:
    name = "base"
    input_format = "normalized"  # float32 NCHW from preprocess.normalize | "uint8_nhwc" (deploy graphs)
    output_format = "logits"  # float32 NCHW | "mask" (class indices N x H x W, uint8 or int32)
    stream_ordered = False
    supports_cuda_graph = False

    def __init__(self, precision: str, device: str):
        self.precision = precision
        self.device = device

    def prepare(self, images: np.ndarray) -> Any:
        return images

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
        pass

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
