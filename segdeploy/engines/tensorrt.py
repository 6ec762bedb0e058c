"""TensorRT engines from the precision graphs: what segdeploy decides itself around the build.

The build itself goes through NVIDIA's Polygraphy (engines/trt_build.py). Here: the TensorRT/CUDA match
with torch, one optimisation profile per batch size to tune for, the timing cache named per TensorRT version
and GPU, the provenance manifest and the rebuild decision. Everything here runs without TensorRT and is
tested on CPU; the build and the runner are `trt`/`gpu` tests. NOT EXECUTED in this project on a GPU with
TensorRT (see README "What was run where").
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Iterable

from segdeploy.core import fileio
from segdeploy.core.config import EngineConfig
from segdeploy.core.errors import BackendUnavailable, ConfigError, SegdeployError
from segdeploy.core.rundir import RunDir
from segdeploy.core.size import input_hw

# Everything that makes an engine what it is: a manifest differing in any of these is rebuilt.
MANIFEST_KEYS = ("onnx_sha256", "precision", "profiles", "workspace_bytes", "strongly_typed", "tf32",
                 "optimization_level", "tensorrt_version", "gpu_name", "compute_capability")
# What must match where an engine is loaded (the build settings only change how it was tuned).
LOAD_KEYS = ("tensorrt_version", "gpu_name", "compute_capability")
TENSORRT_EXTRAS = {"12": "trt-cu12", "13": "trt-cu13"}  # torch.version.cuda major -> pyproject extra


# --------------------------------------------------------------------------- TensorRT and CUDA


def install_hint(torch_cuda: str | None) -> str:
    """The extra whose TensorRT wheels match torch's CUDA (TensorRT's own `tensorrt` package pulls CUDA 13)."""
    extra = TENSORRT_EXTRAS.get((torch_cuda or "").split(".")[0])
    if extra is None:
        return f"pip install 'segdeploy[trt-cu12]' or 'segdeploy[trt-cu13]', matching torch's CUDA ({torch_cuda})"
    return f"pip install 'segdeploy[{extra}]' (TensorRT for torch's CUDA {torch_cuda})"


def tensorrt_cuda_major(distributions: Iterable[str]) -> str | None:
    """'13' from an installed `tensorrt-cu13-bindings` (or -libs, or the frontend); None if no wheel says
    (TensorRT from a tar or deb install)."""
    for name in distributions:
        found = re.fullmatch(r"tensorrt[-_]cu(\d+)(?:[-_].*)?", name.lower())
        if found:
            return found.group(1)
    return None


def cuda_mismatch(tensorrt_cuda: str | None, torch_cuda: str | None) -> str | None:
    """Why TensorRT's CUDA cannot serve this torch, or None."""
    if tensorrt_cuda is None or torch_cuda is None:
        return None
    if tensorrt_cuda != torch_cuda.split(".")[0]:
        return (f"TensorRT is built for CUDA {tensorrt_cuda}, torch for CUDA {torch_cuda}: install the matching "
                f"wheels, {install_hint(torch_cuda)}")
    return None


def _torch_cuda() -> str | None:
    import torch

    return torch.version.cuda


def import_tensorrt():
    """The tensorrt module, or BackendUnavailable saying what to install (matching torch's CUDA)."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable(f"TensorRT is not installed: {install_hint(_torch_cuda())}") from None
    names = [dist.metadata["Name"] or "" for dist in metadata.distributions()]
    mismatch = cuda_mismatch(tensorrt_cuda_major(n for n in names if n.lower().startswith("tensorrt")), _torch_cuda())
    if mismatch:
        raise BackendUnavailable(mismatch)
    return tensorrt


def select_gpu(device: str = "cuda") -> dict:
    """Make `device` torch's (and so TensorRT's) current CUDA device; its name and compute capability."""
    import torch

    if not device.startswith("cuda"):
        raise ConfigError(f"TensorRT runs on a CUDA device, got --device {device}")
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs a CUDA GPU, and torch sees none")
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    if index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    torch.cuda.set_device(index)  # the builder, the runtime and the buffers all on this GPU
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu_name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


# --------------------------------------------------------------------------- settings and profiles


def validate(cfg: EngineConfig) -> None:
    opts = cfg.opt_batches
    if not opts or not all(1 <= cfg.min_batch <= b <= cfg.max_batch for b in opts):
        raise ConfigError(f"TensorRT batch profiles need 1 <= min <= every opt <= max, got --min-batch {cfg.min_batch} "
                          f"--opt-batch {','.join(map(str, opts)) or '(none)'} --max-batch {cfg.max_batch}")
    if cfg.workspace_gb <= 0:
        raise ConfigError(f"--workspace-gb must be > 0, got {cfg.workspace_gb}")
    if cfg.optimization_level is not None and not 0 <= cfg.optimization_level <= 5:
        raise ConfigError(f"TensorRT builder optimisation level is 0-5, got {cfg.optimization_level}")


def profile_batches(cfg: EngineConfig) -> list[tuple[int, int, int]]:
    """(min, opt, max) batch per profile, one per batch to tune for. Profile k covers the batches above the
    previous opt batch up to its own, the last one up to max_batch: every batch in [min, max] has exactly one
    profile, and each benchmarked batch is the one its profile was tuned for."""
    opts = sorted(set(cfg.opt_batches))
    lows = [cfg.min_batch] + [b + 1 for b in opts[:-1]]
    highs = opts[:-1] + [cfg.max_batch]
    return list(zip(lows, opts, highs))


def profile_shapes(cfg: EngineConfig, size: int | list[int], deploy: bool = False) -> list[dict[str, list[int]]]:
    """Input shapes per profile: batch dynamic within each; channels, height and width static (NCHW, or
    NHWC for a deploy graph's uint8 images)."""
    height, width = input_hw(size)
    rest = [height, width, 3] if deploy else [3, height, width]
    return [{"min": [lo, *rest], "opt": [opt, *rest], "max": [hi, *rest]} for lo, opt, hi in profile_batches(cfg)]


def deploy_unavailable(tensorrt_version: str) -> str | None:
    """Why this TensorRT cannot build a deploy graph (None: it can). Its ops (Cast, Div, Sub, Transpose,
    ArgMax, Softmax) are all in onnx-tensorrt's operator list; UINT8 is a TensorRT type only as a network
    input or output tensor, and only from TensorRT 9 on (the TensorRT 8.x lists have no UINT8)."""
    major = int(tensorrt_version.split(".")[0])
    if major < 9:
        return (f"TensorRT {tensorrt_version} has no uint8 network inputs (from TensorRT 9 on): "
                "run the deploy graph on onnxruntime+deploy or openvino+deploy, or the plain graph on tensorrt")
    return None


def profile_for(shape: tuple[int, ...], profiles: list[dict[str, list[int]]], engine: Path | None = None) -> int:
    """The index of the profile that takes `shape`; a one-line error (before TensorRT sees it) otherwise."""
    first = profiles[0]
    if len(shape) != len(first["min"]):
        raise SegdeployError(f"TensorRT engine expects a {len(first['min'])}-d input, got shape {list(shape)}")
    if list(shape[1:]) != list(first["max"][1:]):
        raise SegdeployError(f"TensorRT engine expects input {['batch', *first['max'][1:]]}, got {list(shape)}")
    for index, profile in enumerate(profiles):
        if profile["min"][0] <= shape[0] <= profile["max"][0]:
            return index
    lo, hi = min(p["min"][0] for p in profiles), max(p["max"][0] for p in profiles)
    run, precision = ((engine.parent.parent, f" --precision {engine.name.split('.')[0]}"
                       f"{' --deploy' if '.deploy.' in engine.name else ''}") if engine is not None else ("RUN", ""))
    raise SegdeployError(f"batch {shape[0]} is outside the engine's profiles (min {lo}, max {hi})",
                         hint=f"rebuild it: `segdeploy export {run} --trt{precision} --min-batch {min(lo, shape[0])} "
                              f"--max-batch {max(hi, shape[0])} --rebuild`")


def precision_flags(tensorrt_version: str, precision: str, strongly_typed: bool) -> list[str]:
    """Builder precision flags to set. A strongly typed network takes its precision from the graph and
    TensorRT rejects precision flags on it; TensorRT 11 removed them. So only a weakly typed
    TensorRT 10 build sets BuilderFlag.FP16 (fp16) or INT8 (+FP16 for layers left unquantised)."""
    major = int(tensorrt_version.split(".")[0])
    if strongly_typed or major >= 11:
        return []
    return {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]


# --------------------------------------------------------------------------- files and manifests


def engine_path(run: RunDir, precision: str, deploy: bool = False) -> Path:
    """RUN/engines/<precision>.plan, or <precision>.deploy.plan built from the deploy graph."""
    run.onnx_path(precision)  # validates the precision name
    return run.engines_dir / f"{precision}{'.deploy' if deploy else ''}.plan"


def manifest_path(run: RunDir, precision: str, deploy: bool = False) -> Path:
    return engine_path(run, precision, deploy).with_suffix(".json")


def build_log_path(run: RunDir, precision: str, deploy: bool = False) -> Path:
    return engine_path(run, precision, deploy).with_suffix(".build.log")


def timing_cache_path(run: RunDir, tensorrt_version: str, compute_capability: str) -> Path:
    """One timing cache per TensorRT version and GPU architecture: TensorRT refuses another's cache."""
    return run.engines_dir / f"timing-trt{tensorrt_version}-sm{compute_capability.replace('.', '')}.cache"


def current_manifest(onnx_file: Path, precision: str, cfg: EngineConfig, size: int | list[int],
                     tensorrt_version: str, gpu: dict, deploy: bool = False) -> dict:
    """What a manifest must say for an engine to be reused here and now."""
    return {"onnx_file": onnx_file.name, "onnx_sha256": fileio.sha256_file(onnx_file), "precision": precision,
            "graph": "deploy" if deploy else "plain", "profiles": profile_shapes(cfg, size, deploy), "workspace_bytes": int(cfg.workspace_gb * 2**30),
            "strongly_typed": cfg.strongly_typed, "tf32": cfg.tf32, "optimization_level": cfg.optimization_level,
            "tensorrt_version": tensorrt_version, "gpu_name": gpu["gpu_name"],
            "compute_capability": gpu["compute_capability"]}


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
        deploy = " --deploy" if manifest.get("graph") == "deploy" else ""
        raise SegdeployError(f"engine {engine} does not fit here ({'; '.join(mismatches)})",
                             hint=f"rebuild it: `segdeploy export {engine.parent.parent} --trt "
                                  f"--precision {precision}{deploy} --rebuild`")
