"""Benchmark variants: a backend plus modifiers, e.g. `torch+fp16+cl+graph` or `onnxruntime+cuda`.

Grammar: BACKEND[+MODIFIER]... with modifiers
  torch:        fp16 | bf16 (autocast), cl (channels_last), compile[=MODE] (torch.compile),
                graph (CUDA graph capture of the static-shape step)
  onnxruntime:  cpu (default) | cuda | trt (execution provider; IOBinding on torch buffers on GPU)
  tensorrt:     graph (CUDA graph capture of execute_async_v3, through the runner's stream)
Presets expand to lists: `torch-all` (every torch variant the device supports), `ort-all`, `all`.

Everything here runs inside one benchmark cell (usually a fresh subprocess, see bench_cell.py);
heavy libraries are imported inside the functions that need them. A variant that cannot run here
raises BackendUnavailable, which the sweep shows as "unavailable: reason".
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from segdeploy.core.errors import BackendUnavailable, ConfigError, SegdeployError
from segdeploy.runtime.base import OnnxRuntimeRunner, Runner, TorchRunner

TORCH_MODIFIERS = ("fp16", "bf16", "cl", "channels_last", "compile", "graph")
ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "trt": "TensorrtExecutionProvider"}


@dataclass(frozen=True)
class Variant:
    backend: str
    precision: str = "fp32"  # torch: autocast dtype; graph backends: which exported graph
    channels_last: bool = False
    compile_mode: str | None = None
    cuda_graph: bool = False
    provider: str = "cpu"  # onnxruntime execution provider

    @property
    def name(self) -> str:
        parts = [self.backend]
        if self.backend == "onnxruntime" and self.provider != "cpu":
            parts.append(self.provider)
        if self.backend == "torch" and self.precision != "fp32":
            parts.append(self.precision)
        if self.channels_last:
            parts.append("cl")
        if self.compile_mode:
            parts.append("compile" if self.compile_mode == "default" else f"compile={self.compile_mode}")
        if self.cuda_graph:
            parts.append("graph")
        return "+".join(parts)


@dataclass
class CellContext:
    """What a runner factory needs to build a runner for one cell."""

    run_dir: Path
    device: str = "cpu"
    threads: int | None = None
    onnx_path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)


RunnerFactory = Callable[[Variant, CellContext], Runner]


def parse_variant(spec: str, precision: str = "fp32", compile_mode: str = "default") -> Variant:
    """'torch+fp16+cl+graph' -> Variant; `precision` is the graph precision for exported backends."""
    backend, *modifiers = [part.strip() for part in spec.strip().split("+")]
    if backend not in BENCH_BACKENDS:
        raise ConfigError(f"unknown backend {backend!r} in {spec!r} "
                          f"(known: {', '.join(BENCH_BACKENDS)}; presets: {', '.join(PRESETS)})")
    variant = Variant(backend, precision=precision if backend != "torch" else "fp32")
    for modifier in modifiers:
        key, _, value = modifier.partition("=")
        if backend == "torch" and key in ("fp16", "bf16"):
            variant = replace(variant, precision=key)
        elif backend == "torch" and key in ("cl", "channels_last"):
            variant = replace(variant, channels_last=True)
        elif backend == "torch" and key == "compile":
            variant = replace(variant, compile_mode=value or compile_mode)
        elif backend in ("torch", "tensorrt") and key == "graph":
            variant = replace(variant, cuda_graph=True)
        elif backend == "onnxruntime" and key in ORT_PROVIDERS:
            variant = replace(variant, provider=key)
        elif backend not in ("torch", "onnxruntime", "tensorrt"):
            raise ConfigError(f"backend {backend!r} takes no modifiers, got {spec!r}")
        else:
            raise ConfigError(f"unknown modifier {modifier!r} for {backend} in {spec!r} "
                              f"(see `segdeploy bench --help`)")
    if variant.compile_mode and variant.cuda_graph:
        raise ConfigError(f"{spec!r}: use compile=reduce-overhead for CUDA graphs with torch.compile, "
                          "not compile together with graph")
    return variant


PRESETS = {
    "torch-all": {"cpu": ["torch", "torch+cl"],
                  "cuda": ["torch", "torch+cl", "torch+fp16", "torch+bf16", "torch+fp16+cl", "torch+bf16+cl",
                           "torch+graph", "torch+fp16+cl+graph", "torch+compile",
                           "torch+fp16+cl+compile=max-autotune-no-cudagraphs",
                           "torch+fp16+cl+compile=reduce-overhead"]},
    "ort-all": {"cpu": ["onnxruntime"], "cuda": ["onnxruntime+cuda", "onnxruntime+trt"]},
}
PRESETS["all"] = {device: PRESETS["torch-all"][device] + PRESETS["ort-all"][device]
                  + (["tensorrt", "tensorrt+graph"] if device == "cuda" else []) for device in ("cpu", "cuda")}


def expand_backends(specs: list[str], device: str, precisions: list[str],
                    compile_mode: str = "default") -> list[Variant]:
    """Backend specs (with presets) -> variants; graph backends once per precision; no duplicates."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    variants: list[Variant] = []
    for spec in specs:
        names = PRESETS[spec][kind] if spec in PRESETS else [spec]
        for name in names:
            first = parse_variant(name, compile_mode=compile_mode)
            for precision in (precisions if first.backend != "torch" else ["fp32"]):
                variant = parse_variant(name, precision, compile_mode)
                if variant not in variants:
                    variants.append(variant)
    return variants


def unavailable_reason(variant: Variant, device: str) -> str | None:
    """A reason this variant cannot run on `device` here, found without loading a model; else None."""
    cuda = device.startswith("cuda")
    if variant.backend == "torch":
        if variant.precision == "fp16" and not cuda:
            return "autocast fp16 needs a CUDA device"
        if variant.cuda_graph and not cuda:
            return "CUDA graphs need a CUDA device"
    if variant.backend == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed"
        if variant.provider != "cpu" and not cuda:
            return f"the {ORT_PROVIDERS[variant.provider]} needs --device cuda"
        if variant.provider == "cpu" and cuda:
            return "onnxruntime's CPUExecutionProvider is benchmarked with --device cpu"
        import onnxruntime as ort

        if ORT_PROVIDERS[variant.provider] not in ort.get_available_providers():
            return (f"{ORT_PROVIDERS[variant.provider]} not in this onnxruntime build "
                    f"(has {', '.join(ort.get_available_providers())}; pip install 'segdeploy[gpu]')")
    if variant.backend == "tensorrt":
        from segdeploy.runtime.base import BACKENDS

        if not cuda:
            return "TensorRT needs a CUDA device"
        if importlib.util.find_spec("tensorrt") is None:
            return "tensorrt is not installed (pip install 'segdeploy[trt]')"
        if "tensorrt" not in BACKENDS:
            return "no TensorRT runner registered in segdeploy.runtime.base.BACKENDS"
    return None


# --------------------------------------------------------------------------------------------------
# torch


class TorchVariantRunner(TorchRunner):
    """torch eager / autocast / channels_last / torch.compile; all work on torch's current stream."""

    stream_ordered = True
    supports_cuda_graph = True

    def __init__(self, model, variant: Variant, device: str):
        super().__init__(model, device=device)
        torch = self.torch
        self.precision = variant.precision
        self.variant = variant
        self.memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format
        if variant.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if variant.compile_mode:
            self.model = torch.compile(self.model, mode=variant.compile_mode)
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(variant.precision)
        self.device_type = "cuda" if device.startswith("cuda") else "cpu"

    def prepare(self, images: np.ndarray):
        return super().prepare(images).contiguous(memory_format=self.memory_format)

    def run(self, prepared):
        if self.autocast_dtype is None:
            return super().run(prepared)
        # cache_enabled=False: autocast's weight cast cache must not outlive a CUDA graph capture
        with self.torch.inference_mode(), self.torch.autocast(self.device_type, dtype=self.autocast_dtype,
                                                               cache_enabled=False):
            return self.model(prepared)


def build_torch(variant: Variant, ctx: CellContext) -> Runner:
    import torch

    from segdeploy.core.rundir import RunDir, load_model

    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    model, _, _ = load_model(RunDir(ctx.run_dir))
    return TorchVariantRunner(model, variant, ctx.device)


# --------------------------------------------------------------------------------------------------
# CUDA graphs (torch runners and any runner that declares `supports_cuda_graph`)


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


# --------------------------------------------------------------------------------------------------
# ONNX Runtime


class OrtIOBindingRunner(Runner):
    """ONNX Runtime CUDA/TensorRT execution provider with IOBinding on torch CUDA buffers.

    The session runs on torch's current stream (`user_compute_stream`), input and output live in torch
    tensors bound by pointer, so nothing is copied between host and device inside `run`.
    """

    name = "onnxruntime"
    stream_ordered = False

    def __init__(self, onnx_path: Path, variant: Variant, device: str, threads: int | None,
                 cache_dir: Path | None = None):
        import onnxruntime as ort
        import torch

        super().__init__(variant.precision, device)
        self.torch = torch
        self.device_id = torch.device(device).index or 0
        torch.cuda.set_device(self.device_id)
        stream = str(torch.cuda.current_stream().cuda_stream)
        cuda_options = {"device_id": str(self.device_id), "user_compute_stream": stream}
        requested = ORT_PROVIDERS[variant.provider]
        if variant.provider == "trt":
            trt_options = {"device_id": str(self.device_id), "user_compute_stream": stream,
                           "trt_fp16_enable": str(variant.precision == "fp16"),
                           "trt_engine_cache_enable": "True",
                           "trt_engine_cache_path": str(cache_dir or Path(onnx_path).parent / "ort_trt_cache")}
            providers = [(requested, trt_options), ("CUDAExecutionProvider", cuda_options)]
        else:
            providers = [(requested, cuda_options)]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendUnavailable(f"onnxruntime cannot create a {requested} session: {first}") from None
        in_use = self.session.get_providers()
        # ORT silently falls back to the CPU provider when the one asked for fails to load.
        if not in_use or in_use[0] != requested:
            raise BackendUnavailable(f"asked onnxruntime for {requested}, session uses {in_use}")
        self.providers_in_use = in_use
        model_input = self.session.get_inputs()[0]
        model_output = self.session.get_outputs()[0]
        self.input_name, self.output_name = model_input.name, model_output.name
        self.input_dtype = torch.float16 if "float16" in model_input.type else torch.float32
        self.output_dtype = torch.float16 if "float16" in model_output.type else torch.float32
        self.output_shape = model_output.shape

    def prepare(self, images: np.ndarray):
        torch = self.torch
        images_t = torch.from_numpy(images).to(self.device).to(self.input_dtype).contiguous()
        shape = [images.shape[0]] + [d if isinstance(d, int) else s
                                     for d, s in zip(self.output_shape[1:], images.shape[1:])]
        output = torch.empty(shape, dtype=self.output_dtype, device=self.device)
        binding = self.session.io_binding()
        to_np = {torch.float32: np.float32, torch.float16: np.float16}
        binding.bind_input(self.input_name, "cuda", self.device_id, to_np[self.input_dtype],
                           tuple(images_t.shape), images_t.data_ptr())
        binding.bind_output(self.output_name, "cuda", self.device_id, to_np[self.output_dtype],
                            tuple(output.shape), output.data_ptr())
        return binding, images_t, output

    def run(self, prepared):
        binding, _, output = prepared
        self.session.run_with_iobinding(binding)
        return output

    def synchronize(self) -> None:
        self.torch.cuda.synchronize(self.device)

    def to_numpy(self, output) -> np.ndarray:
        return output.float().cpu().numpy()


def build_onnxruntime(variant: Variant, ctx: CellContext) -> Runner:
    path = ctx.onnx_path
    if path is None or not Path(path).is_file():
        raise SegdeployError(f"ONNX graph not found: {path} (run `segdeploy export {ctx.run_dir}` first)")
    if variant.provider == "cpu":
        return OnnxRuntimeRunner(Path(path), precision=variant.precision, device="cpu", threads=ctx.threads)
    return OrtIOBindingRunner(Path(path), variant, ctx.device, ctx.threads)


# --------------------------------------------------------------------------------------------------
# TensorRT: the runner itself comes from the precision/TensorRT issue through runners.BACKENDS


def build_tensorrt(variant: Variant, ctx: CellContext) -> Runner:
    from segdeploy.core.rundir import RunDir
    from segdeploy.runtime.base import BACKENDS

    if "tensorrt" not in BACKENDS:
        raise BackendUnavailable("no TensorRT runner registered in segdeploy.runtime.base.BACKENDS")
    runner = BACKENDS["tensorrt"](RunDir(ctx.run_dir), precision=variant.precision, device=ctx.device,
                                  threads=ctx.threads)
    if variant.cuda_graph:
        return CudaGraphRunner(runner)
    return runner


BENCH_BACKENDS: dict[str, RunnerFactory] = {
    "torch": build_torch,
    "onnxruntime": build_onnxruntime,
    "tensorrt": build_tensorrt,
}


def build_runner(variant: Variant, ctx: CellContext) -> Runner:
    reason = unavailable_reason(variant, ctx.device) if variant.backend in ("torch", "onnxruntime",
                                                                              "tensorrt") else None
    if reason:
        raise BackendUnavailable(reason)
    runner = BENCH_BACKENDS[variant.backend](variant, ctx)
    if variant.backend == "torch" and variant.cuda_graph:
        runner = CudaGraphRunner(runner)
    return runner


def load_plugins(paths: list[str | Path]) -> None:
    """Import Python files that add entries to BENCH_BACKENDS (extra backends, test doubles)."""
    import importlib.util as util

    for i, path in enumerate(paths):
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"bench plugin not found: {path}")
        spec = util.spec_from_file_location(f"segdeploy_bench_plugin_{i}_{path.stem}", path)
        module = util.module_from_spec(spec)
        spec.loader.exec_module(module)
