"""TensorRT engines from the precision graphs, with a provenance manifest, and a TensorRT runner.

Written against the documented TensorRT 10/11 Python API (strongly typed networks: the precision
comes from the ONNX graph, FP16 tensors or explicit Q/DQ nodes). NOT EXECUTED in this project:
no GPU and no TensorRT on its machines. Everything around it (manifests, rebuild decisions, profile
checks, the missing-TensorRT error) is tested on CPU; the build and the runner are `trt`/`gpu` tests.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from segdeploy.core import fileio
from segdeploy.core.errors import BackendUnavailable, ConfigError, SegdeployError
from segdeploy.core.rundir import RunDir
from segdeploy.core.size import input_hw

INSTALL_HINT = "pip install 'segdeploy[trt]'"
MANIFEST_KEYS = ("onnx_sha256", "precision", "profile", "tensorrt_version", "gpu_name", "compute_capability")


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable(f"TensorRT is not installed: {INSTALL_HINT}") from None
    return tensorrt


@dataclass
class BuildOptions:
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_gb: float = 4.0
    strongly_typed: bool = True  # TensorRT 11: always; TensorRT 10: opt-in flag, set by default here

    def validate(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"TensorRT batch profile needs 1 <= min <= opt <= max, got "
                              f"--min-batch {self.min_batch} --opt-batch {self.opt_batch} --max-batch {self.max_batch}")
        if self.workspace_gb <= 0:
            raise ConfigError(f"--workspace-gb must be > 0, got {self.workspace_gb}")


def engine_path(run: RunDir, precision: str) -> Path:
    run.onnx_path(precision)  # validates the precision name
    return run.engines_dir / f"{precision}.plan"


def manifest_path(run: RunDir, precision: str) -> Path:
    return engine_path(run, precision).with_suffix(".json")


def timing_cache_path(run: RunDir) -> Path:
    return run.engines_dir / "timing.cache"


def profile_shapes(options: BuildOptions, size: int | list[int]) -> dict[str, list[int]]:
    """Batch is dynamic within the profile; channels, height and width are static."""
    height, width = input_hw(size)
    return {"min": [options.min_batch, 3, height, width], "opt": [options.opt_batch, 3, height, width],
            "max": [options.max_batch, 3, height, width]}


def precision_flags(tensorrt_version: str, precision: str, strongly_typed: bool) -> list[str]:
    """Builder precision flags to set. A strongly typed network takes its precision from the graph and
    TensorRT rejects precision flags on it; TensorRT 11 removed them. So only a weakly typed
    TensorRT 10 build sets BuilderFlag.FP16 (fp16) or INT8 (+FP16 for layers left unquantised)."""
    major = int(tensorrt_version.split(".")[0])
    if strongly_typed or major >= 11:
        return []
    return {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]


def gpu_identity(device: str = "cuda") -> dict:
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs a CUDA GPU, and torch sees none")
    index = torch.device(device).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu_name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def current_manifest(onnx_file: Path, precision: str, options: BuildOptions, size: int,
                     tensorrt_version: str, gpu: dict) -> dict:
    """What a manifest must say for an engine to be reused here and now."""
    return {"onnx_file": onnx_file.name, "onnx_sha256": fileio.sha256_file(onnx_file), "precision": precision,
            "profile": profile_shapes(options, size), "tensorrt_version": tensorrt_version,
            "gpu_name": gpu["gpu_name"], "compute_capability": gpu["compute_capability"]}


def manifest_mismatches(manifest: dict, current: dict, keys: tuple[str, ...] = MANIFEST_KEYS) -> list[str]:
    """'key: engine X, here Y' for every provenance field that differs."""
    return [f"{key}: engine {manifest.get(key)!r}, here {current.get(key)!r}"
            for key in keys if manifest.get(key) != current.get(key)]


def build_decision(engine: Path, manifest_file: Path, current: dict, rebuild: bool) -> tuple[bool, str]:
    """(build?, why): build when asked, when the engine or manifest is missing, or when they differ."""
    if rebuild:
        return True, "--rebuild"
    if not engine.is_file() or not manifest_file.is_file():
        return True, "no engine yet"
    try:
        manifest = fileio.read_json(manifest_file)
    except ValueError:
        return True, "manifest unreadable"
    if manifest.get("engine_sha256") != fileio.sha256_file(engine):
        return True, "engine file does not match its manifest"
    mismatches = manifest_mismatches(manifest, current)
    if mismatches:
        return True, "; ".join(mismatches)
    return False, "manifest matches"


def check_manifest(engine: Path, manifest: dict, current: dict, keys: tuple[str, ...]) -> None:
    """Loading an engine built elsewhere (other GPU, TensorRT or graph) is an error that says to rebuild."""
    mismatches = manifest_mismatches(manifest, current, keys)
    if mismatches:
        precision = manifest.get("precision", "fp32")
        raise SegdeployError(f"engine {engine} does not fit here ({'; '.join(mismatches)})",
                             hint=f"rebuild it: segdeploy export {engine.parent.parent} --trt "
                                  f"--precision {precision} --rebuild")


def check_batch(shape: tuple[int, ...], profile: dict[str, list[int]]) -> None:
    """An input outside the engine's optimisation profile is a one-line error, before TensorRT sees it."""
    lo, hi = profile["min"], profile["max"]
    if len(shape) != len(lo):
        raise SegdeployError(f"TensorRT engine expects a {len(lo)}-d input, got shape {list(shape)}")
    if not lo[0] <= shape[0] <= hi[0]:
        raise SegdeployError(f"batch {shape[0]} is outside the engine's profile (min {lo[0]}, max {hi[0]}): "
                             f"rebuild with `segdeploy export RUN --trt --min-batch/--max-batch ... --rebuild`")
    if list(shape[1:]) != list(hi[1:]):
        raise SegdeployError(f"TensorRT engine expects input {['batch', *hi[1:]]}, got {list(shape)}")


def read_timing_cache(path: Path) -> bytes:
    return path.read_bytes() if path.is_file() else b""


# --------------------------------------------------------------------------- build (needs TensorRT + GPU)


def build_engine(onnx_file: Path, engine_file: Path, precision: str, options: BuildOptions, size: int,
                 cache_file: Path) -> float:
    """Parse the ONNX graph into a strongly typed network and serialise an engine; returns build seconds."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if options.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SegdeployError(f"TensorRT cannot parse {onnx_file}: {errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * 2**30))
    for name in precision_flags(trt.__version__, precision, options.strongly_typed):
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(options, size)
    profile.set_shape(network.get_input(0).name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(read_timing_cache(cache_file))
    config.set_timing_cache(cache, ignore_mismatch=False)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise SegdeployError(f"TensorRT failed to build an engine from {onnx_file} (see the log above)")
    fileio.write_bytes(engine_file, bytes(serialized))
    fileio.write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))
    return seconds


def build_engines(run: RunDir, precisions: list[str], options: BuildOptions,
                  rebuild: bool = False) -> dict[str, tuple[Path, bool]]:
    """RUN/engines/<precision>.plan + .json for each precision graph; reuses engines whose manifest matches."""
    trt = import_tensorrt()
    options.validate()
    gpu = gpu_identity()
    size = run.load_config().data.size
    results = {}
    for precision in precisions:
        onnx_file = run.require(run.onnx_path(precision), f"export --precision {precision}")
        engine, manifest_file = engine_path(run, precision), manifest_path(run, precision)
        current = current_manifest(onnx_file, precision, options, size, trt.__version__, gpu)
        build, reason = build_decision(engine, manifest_file, current, rebuild)
        if build:
            seconds = build_engine(onnx_file, engine, precision, options, size, timing_cache_path(run))
            fileio.write_json(manifest_file, {
                **current, "engine_file": engine.name, "engine_sha256": fileio.sha256_file(engine),
                "build_seconds": seconds, "build_reason": reason, "options": asdict(options),
                "builder_flags": precision_flags(trt.__version__, precision, options.strongly_typed),
                "timing_cache": timing_cache_path(run).name,
            })
        results[precision] = (engine, build)
    return results
