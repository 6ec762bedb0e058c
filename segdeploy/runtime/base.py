"""Backend runners behind one interface, so eval, parity and bench compare models, not pipelines.

A runner takes normalised float32 NCHW images (see `preprocess.normalize`) and returns logits NCHW.
`prepare` puts a batch where the backend reads it (once, outside any timed region), `run` computes
(and may return before the device is done), `synchronize` waits for the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from segdeploy.core.errors import BackendUnavailable, ConfigError, SegdeployError

if TYPE_CHECKING:  # type hints only: keeps `import segdeploy.runtime.base` free of torch (bench cells)
    from segdeploy.core.rundir import RunDir


class Runner:
    name = "base"

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


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, model, device: str = "cpu", precision: str = "fp32"):
        import torch

        if precision != "fp32":
            raise ConfigError(f"the torch runner runs fp32 here, not {precision!r}")
        super().__init__(precision, device)
        self.torch = torch
        self.model = model.to(device).eval()

    def prepare(self, images: np.ndarray):
        return self.torch.from_numpy(images).to(self.device)

    def run(self, prepared):
        with self.torch.inference_mode():
            return self.model(prepared)

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize(self.device)

    def to_numpy(self, output) -> np.ndarray:
        return output.float().cpu().numpy()


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, precision: str = "fp32", device: str = "cpu",
                 threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from None
        super().__init__(precision, device)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            providers = ["CUDAExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types for a bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SegdeployError(f"onnxruntime cannot load {onnx_path}: {first}") from None
        if self.session.get_providers()[0] != providers[0]:
            raise BackendUnavailable(f"onnxruntime fell back to {self.session.get_providers()[0]} "
                                     f"instead of {providers[0]} (install onnxruntime-gpu)")
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = model_input.shape  # e.g. ['batch', 3, 256, 256]
        self.input_dtype = np.float16 if "float16" in model_input.type else np.float32
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


def load_torch(run: RunDir, precision: str = "fp32", device: str = "cpu",
               threads: int | None = None) -> Runner:
    from segdeploy.core.rundir import load_model

    model, _, _ = load_model(run)
    return TorchRunner(model, device=device, precision=precision)


def load_onnxruntime(run: RunDir, precision: str = "fp32", device: str = "cpu",
                     threads: int | None = None) -> Runner:
    path = run.require(run.onnx_path(precision), f"export --precision {precision}")
    return OnnxRuntimeRunner(path, precision=precision, device=device, threads=threads)


def load_tensorrt(run: RunDir, precision: str = "fp32", device: str = "cuda",
                  threads: int | None = None) -> Runner:
    from segdeploy.engines.tensorrt import load_tensorrt as load_engine  # segdeploy.engines.tensorrt imports this module

    return load_engine(run, precision=precision, device=device, threads=threads)


BACKENDS: dict[str, Callable[..., Runner]] = {
    "torch": load_torch,
    "onnxruntime": load_onnxruntime,
    "tensorrt": load_tensorrt,
}


def load_runner(backend: str, run: RunDir, precision: str = "fp32", device: str = "cpu",
                threads: int | None = None) -> Runner:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    return BACKENDS[backend](run, precision=precision, device=device, threads=threads)


def iterate_logits(runner: Runner, dataset, batch_size: int = 8) -> Iterator[tuple[range, np.ndarray]]:
    """Logits of every image of a dataset, batch by batch, through the shared preprocessing."""
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        yield indices, runner.infer(dataset.normalized_batch(indices))
