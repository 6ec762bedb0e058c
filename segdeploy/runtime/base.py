"""The one runner interface, so eval, parity and bench compare models, not pipelines.

A runner takes normalised float32 NCHW images (see `data.preprocess.normalize`) and returns logits NCHW.
`prepare` puts a batch where the backend reads it (once, outside any timed region), `run` computes
(and may return before the device is done), `synchronize` waits for the device, `to_numpy` brings an
output back to the host. Runners that can be captured in a CUDA graph set `supports_cuda_graph` (see
runtime/cuda_graph.py); `stream_ordered` runners enqueue all work on torch's current CUDA stream.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np


class Runner:
    name = "base"
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
        output = self.run(self.prepare(np.ascontiguousarray(images, dtype=np.float32)))
        self.synchronize()
        return self.to_numpy(output).astype(np.float32, copy=False)

    def close(self) -> None:
        pass

    def input_buffer(self, prepared: Any) -> Any:
        """The device tensor `run(prepared)` reads (a CUDA graph replay reads it; a new batch is copied in)."""
        return prepared

    def row_info(self) -> dict:
        """Facts about the last run for a benchmark row (e.g. TensorRT profile and engine memory)."""
        return {}


def iterate_logits(runner: Runner, dataset, batch_size: int = 8) -> Iterator[tuple[range, np.ndarray]]:
    """Logits of every image of a dataset, batch by batch, through the shared preprocessing."""
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        yield indices, runner.infer(dataset.normalized_batch(indices))
