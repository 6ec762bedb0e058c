"""The TensorRT engine build (`build_engines`: RUN/engines/<precision>.plan + manifest) through NVIDIA's Polygraphy.

Polygraphy parses the ONNX graph into a (strongly typed) network, registers TensorRT's plugins, reports
every parser error, creates the builder config (profiles, workspace, TF32 cleared unless asked for) and
saves the timing cache under a file lock, on the 10.x and 11.x APIs alike. segdeploy adds what it does not
check: whether TensorRT accepted the timing cache (another GPU's or version's is refused: then a fresh one),
and one-line errors that quote the errors of the build log kept next to the engine. NOT EXECUTED in this
project (no TensorRT on its machines); the cache and error logic is tested on CPU with test doubles.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator

from segdeploy.core import fileio
from segdeploy.core.config import EngineConfig
from segdeploy.core.errors import BackendUnavailable, SegdeployError
from segdeploy.core.rundir import RunDir
from segdeploy.core.unit import FileUnit
from segdeploy.engines.tensorrt import (build_decision, build_log_path, current_manifest, deploy_unavailable, engine_path,
                                        import_tensorrt, manifest_path, precision_flags, select_gpu,
                                        timing_cache_path, validate)
from segdeploy.export.sidecar import checked_graph

MAX_QUOTED_ERRORS = 3


def read_timing_cache(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # missing (first build) or unreadable: a fresh cache either way
        return b""


def attach_timing_cache(config: Any, data: bytes) -> str:
    """Give the builder config the timing cache in `data`, or a fresh one where TensorRT refuses it.

    `set_timing_cache(..., ignore_mismatch=False)` returns False for a cache made by another GPU or TensorRT
    version (and the config then has none); a corrupt file raises. Returns what happened, for the manifest.
    """
    if data:
        try:
            cache = config.create_timing_cache(data)
            if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
                return "loaded"
        except Exception:  # noqa: BLE001 - a damaged cache file only costs build time
            pass
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, ignore_mismatch=False):
        raise SegdeployError("TensorRT refused an empty timing cache (see the TensorRT log above)")
    return "refused by TensorRT (another GPU or TensorRT version, or damaged): built with a fresh cache" \
        if data else "new"


@contextlib.contextmanager
def polygraphy_log(path: Path) -> Iterator[None]:
    """Copy Polygraphy's log (TensorRT's messages included) into `path` while the block runs."""
    from polygraphy.logger import G_LOGGER

    previous = G_LOGGER.log_file
    path.parent.mkdir(parents=True, exist_ok=True)
    G_LOGGER.log_file = str(path)
    try:
        yield
    finally:
        G_LOGGER.log_file = previous


def logged_errors(log_text: str) -> list[str]:
    """The ERROR messages of a Polygraphy log ('[E] ...' lines; continuation lines are indented)."""
    errors: list[str] = []
    for line in log_text.splitlines():
        if line.startswith("[E] "):
            errors.append(line[4:].strip())
        elif errors and line.startswith(" ") and line.strip():
            errors[-1] += " " + line.strip()
    return errors


def build_error(onnx_file: Path, exc: BaseException, log_file: Path) -> SegdeployError:
    """One line: what failed, the first errors of the log, where the whole log is."""
    try:
        errors = logged_errors(log_file.read_text(errors="replace"))
    except OSError:
        errors = []
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    quoted = " | ".join(errors[:MAX_QUOTED_ERRORS])
    more = f" (+{len(errors) - MAX_QUOTED_ERRORS} more)" if len(errors) > MAX_QUOTED_ERRORS else ""
    detail = f": {quoted}{more}" if quoted else ""
    return SegdeployError(f"TensorRT cannot build {onnx_file.name}: {first}{detail}", hint=f"full log: {log_file}")


def onnx_input_name(onnx_file: Path) -> str:
    import onnx

    return onnx.load(str(onnx_file), load_external_data=False).graph.input[0].name


def polygraphy_profiles(input_name: str, profiles: list[dict[str, list[int]]]) -> list:
    from polygraphy.backend.trt import Profile

    return [Profile().add(input_name, min=p["min"], opt=p["opt"], max=p["max"]) for p in profiles]


def import_polygraphy():
    try:
        from polygraphy.backend import trt as polygraphy_trt
        from polygraphy.exception import PolygraphyException
    except ImportError:
        raise BackendUnavailable("Polygraphy is not installed (it builds the TensorRT engines): "
                                 "pip install polygraphy, or the segdeploy[trt-cu12|trt-cu13] extra") from None
    return polygraphy_trt, PolygraphyException


def engine_loader(onnx_file: Path, cfg: EngineConfig, profiles: list[dict[str, list[int]]], flags: list[str],
                  cache_file: Path, info: dict, trt: Any):
    """Polygraphy's lazy build: NetworkFromOnnxPath -> CreateConfig (+ the checked timing cache) ->
    EngineBytesFromNetwork, which saves the timing cache under a lock. Nothing runs until it is called;
    the config callback records the timing-cache status and the TF32 flag in `info`."""
    polygraphy_trt, _ = import_polygraphy()
    create_config = polygraphy_trt.CreateConfig(
        profiles=polygraphy_profiles(onnx_input_name(onnx_file), profiles), tf32=cfg.tf32,
        fp16="FP16" in flags, int8="INT8" in flags, builder_optimization_level=cfg.optimization_level,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(cfg.workspace_gb * 2**30)})

    def config_with_checked_cache(builder, network):
        config = create_config(builder, network)
        info["timing_cache"] = attach_timing_cache(config, read_timing_cache(cache_file))
        info["tf32_flag"] = bool(config.get_flag(trt.BuilderFlag.TF32))  # what the engine was allowed
        return config

    network = polygraphy_trt.NetworkFromOnnxPath(str(onnx_file), strongly_typed=cfg.strongly_typed)
    return polygraphy_trt.EngineBytesFromNetwork(network, config=config_with_checked_cache,
                                                 save_timing_cache=str(cache_file))


def build_engine_bytes(onnx_file: Path, cfg: EngineConfig, profiles: list[dict[str, list[int]]], flags: list[str],
                       cache_file: Path, log_file: Path) -> tuple[bytes, dict]:
    """A serialised engine for `onnx_file` and what the build did (seconds, timing cache, TF32 flag)."""
    trt = import_tensorrt()
    _, PolygraphyException = import_polygraphy()
    info: dict[str, Any] = {}
    build = engine_loader(onnx_file, cfg, profiles, flags, cache_file, info, trt)
    start = time.perf_counter()
    with polygraphy_log(log_file):
        try:
            data = build()
        except (PolygraphyException, RuntimeError, TypeError, ValueError) as exc:
            raise build_error(onnx_file, exc, log_file) from None
    info["build_seconds"] = time.perf_counter() - start
    info["build_log"] = log_file.name
    info["built_with"] = "polygraphy " + _polygraphy_version()
    return bytes(data), info


def _polygraphy_version() -> str:
    import polygraphy

    return getattr(polygraphy, "__version__", "unknown")


def build_engines(run: RunDir, precisions: list[str], cfg: EngineConfig, rebuild: bool = False,
                  deploy: bool = False) -> dict[str, tuple[Path, bool]]:
    """RUN/engines/<precision>.plan + .json for each precision graph; reuses engines whose manifest matches.
    Engine and manifest are one unit: a build that fails or is interrupted leaves the old pair or none."""
    validate(cfg)
    trt = import_tensorrt()
    gpu = select_gpu(cfg.device)
    size = run.load_config().data.size
    cache_file = timing_cache_path(run, trt.__version__, gpu["compute_capability"])
    results = {}
    for precision in precisions:
        if deploy and deploy_unavailable(trt.__version__):
            raise BackendUnavailable(deploy_unavailable(trt.__version__))
        onnx_file = checked_graph(run, precision, deploy)  # the graph its sidecar describes, of this checkpoint
        engine, manifest_file = engine_path(run, precision, deploy), manifest_path(run, precision, deploy)
        current = current_manifest(onnx_file, precision, cfg, size, trt.__version__, gpu, deploy)
        build, reason = build_decision(engine, manifest_file, current, rebuild)
        if build:
            flags = precision_flags(trt.__version__, precision, cfg.strongly_typed)
            data, info = build_engine_bytes(onnx_file, cfg, current["profiles"], flags, cache_file,
                                            build_log_path(run, precision, deploy))
            with FileUnit(run.path) as unit:  # engine and manifest change together (core/unit.py)
                unit.write_bytes(engine, data)
                unit.write_json(manifest_file, {
                    **current, "engine_file": engine.name, "engine_sha256": fileio.sha256_file(unit.path(engine)),
                    "build_reason": reason, "builder_flags": flags, "timing_cache_file": cache_file.name, **info})
        results[f"{precision}{' deploy graph' if deploy else ''}"] = (engine, build)
    return results
