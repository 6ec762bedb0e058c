"""CUDA graphs for any runner that declares `supports_cuda_graph` (torch runners, the TensorRT runner)."""

from __future__ import annotations

from typing import Any

import numpy as np

from segdeploy.core.errors import BackendUnavailable, SegdeployError
from segdeploy.runtime.base import Runner


def refill_input(inner: Runner, prepared: Any, images: np.ndarray) -> None:
    """Copy a new batch into the device tensor that `inner.run(prepared)` reads, in place (what a captured
    graph replays on). The TensorRT runner prepares a tuple (input, output): `input_buffer` says which."""
    import torch

    buffer = inner.input_buffer(prepared)
    if not isinstance(buffer, torch.Tensor):
        raise SegdeployError(f"runner {inner.name!r} prepares a {type(buffer).__name__}: its input_buffer() must "
                             "return the tensor a CUDA graph reads")
    if tuple(buffer.shape) != tuple(images.shape):
        raise SegdeployError(f"cannot copy a batch of shape {list(images.shape)} into the captured input "
                             f"{list(buffer.shape)}")
    buffer.copy_(torch.from_numpy(images))  # converts dtype (fp16 engines) and keeps the memory format


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class CudaGraphRunner(Runner):
    """Capture `inner.run(static_input)` once per input shape into a torch.cuda.CUDAGraph; replay it.

    The hook for other runners (the TensorRT runner): set `supports_cuda_graph = True` and either
    enqueue all work on `torch.cuda.current_stream()` or expose the torch.cuda.Stream it enqueues on
    as `cuda_stream`; capture then happens on that stream. `run` must not synchronise or allocate
    (TensorRT: call `set_input_shape`/`set_tensor_address` in `prepare`, enqueue in `run`); `input_buffer`
    names the tensor a replay reads when `prepare` returns something else. Warm-up runs (and TensorRT's
    required first enqueue) happen on the capture stream before capture. A capture that fails (as
    trtexec does) leaves the runner running without the graph, and says so (`row_info`, a warning).
    """

    stream_ordered = True

    def __init__(self, inner: Runner, warmup_runs: int = 3):
        import torch

        if not getattr(inner, "supports_cuda_graph", False):
            raise BackendUnavailable(f"runner {inner.name!r} does not declare supports_cuda_graph")
        super().__init__(inner.precision, inner.device)
        self.torch = torch
        self.inner = inner
        self.input_format, self.output_format = inner.input_format, inner.output_format
        self.name = f"{inner.name}+graph"
        self.warmup_runs = warmup_runs
        self.graphs: dict[tuple, tuple[Any, Any, Any]] = {}  # shape -> (graph or None, static input, output)
        self.capture_failure: str | None = None

    def prepare(self, images: np.ndarray):
        key = tuple(images.shape)
        if key in self.graphs:  # --include-transfer: refill the captured input buffer (the H2D copy)
            refill_input(self.inner, self.graphs[key][1], images)
            return key
        static_input = self.inner.prepare(images)
        graph, static_output = self.capture(static_input)
        self.graphs[key] = (graph, static_input, static_output)
        return key

    def capture(self, static_input) -> tuple[Any, Any]:
        """(graph, its output tensor), or (None, None) when the capture failed."""
        torch = self.torch
        stream = getattr(self.inner, "cuda_stream", None) or torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup_runs):
                self.inner.run(static_input)
        stream.synchronize()
        graph, static_output, failure = torch.cuda.CUDAGraph(), None, None
        previous = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph, stream=stream):
                try:
                    static_output = self.inner.run(static_input)
                except Exception as exc:  # noqa: BLE001 - kept: capture_end's own error would hide it
                    failure = exc
        except Exception as exc:  # noqa: BLE001 - capture_end: the capture was invalidated
            failure = failure or exc
            torch.cuda.set_stream(previous)  # a failing capture_end leaves the capture stream current
        torch.cuda.current_stream().wait_stream(stream)
        if failure is None:
            return graph, static_output
        return self._without_graph(failure)

    def _without_graph(self, failure: BaseException) -> tuple[None, None]:
        from segdeploy.core.progress import err_console

        self.capture_failure = _first_line(failure)
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize(self.device)
        err_console.print(f"[yellow]warning:[/] CUDA graph capture of {self.inner.name} failed "
                          f"({self.capture_failure}): running without the graph", highlight=False)
        return None, None

    def run(self, prepared):
        graph, static_input, static_output = self.graphs[prepared]
        if graph is None:
            return self.inner.run(static_input)
        graph.replay()
        return static_output

    def synchronize(self) -> None:
        self.inner.synchronize()  # replays run on torch's current stream, which the inner runners wait for

    def to_numpy(self, output) -> np.ndarray:
        return self.inner.to_numpy(output)

    def row_info(self) -> dict:
        status = "captured" if self.capture_failure is None else \
            f"capture failed ({self.capture_failure}): ran without the graph"
        return {**self.inner.row_info(), "cuda_graph": status}

    def close(self) -> None:
        self.graphs.clear()
        self.inner.close()
