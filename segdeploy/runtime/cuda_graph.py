"""CUDA graphs for any runner that declares `supports_cuda_graph` (torch runners, the TensorRT runner)."""

from __future__ import annotations

from typing import Any

import numpy as np

from segdeploy.core.errors import BackendUnavailable
from segdeploy.runtime.base import Runner


class CudaGraphRunner(Runner):
    """Capture `inner.run(static_input)` once per input shape into a torch.cuda.CUDAGraph; replay it.

    The hook for other runners (the TensorRT runner): set `supports_cuda_graph = True` and either
    enqueue all work on `torch.cuda.current_stream()` or expose the torch.cuda.Stream it enqueues on
    as `cuda_stream`; capture then happens on that stream. `run` must not synchronise or allocate
    (TensorRT: call `set_input_shape`/`set_tensor_address` in `prepare`, enqueue in `run`).
    Warm-up runs (and TensorRT's required first enqueue) happen on the capture stream before capture.
    """

    stream_ordered = True

    def __init__(self, inner: Runner, warmup_runs: int = 3):
        import torch

        if not getattr(inner, "supports_cuda_graph", False):
            raise BackendUnavailable(f"runner {inner.name!r} does not declare supports_cuda_graph")
        super().__init__(inner.precision, inner.device)
        self.torch = torch
        self.inner = inner
        self.name = f"{inner.name}+graph"
        self.warmup_runs = warmup_runs
        self.graphs: dict[tuple, tuple[Any, Any, Any]] = {}  # shape -> (graph, static input, static output)

    def prepare(self, images: np.ndarray):
        torch = self.torch
        key = tuple(images.shape)
        if key in self.graphs:  # --include-transfer: refill the captured input buffer (the H2D copy)
            _, static_input, _ = self.graphs[key]
            static_input.copy_(torch.from_numpy(images), non_blocking=False)
            return key
        static_input = self.inner.prepare(images)
        stream = getattr(self.inner, "cuda_stream", None) or torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup_runs):
                self.inner.run(static_input)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            static_output = self.inner.run(static_input)
        torch.cuda.current_stream().wait_stream(stream)
        self.graphs[key] = (graph, static_input, static_output)
        return key

    def run(self, prepared):
        graph, _, static_output = self.graphs[prepared]
        graph.replay()
        return static_output

    def synchronize(self) -> None:
        self.torch.cuda.synchronize(self.device)

    def to_numpy(self, output) -> np.ndarray:
        return self.inner.to_numpy(output)

    def close(self) -> None:
        self.graphs.clear()
        self.inner.close()

