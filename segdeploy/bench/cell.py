"""One benchmark cell (variant x batch size), run in a fresh process so nothing of another backend
remains (memory, caches, compiled kernels).

Protocol: the parent writes a JSON cell spec, runs `python -m segdeploy.bench.cell SPEC OUT`, and reads
the result row from OUT. A child that dies (signal, os._exit, crash in native code) writes no OUT:
the parent reports the cell as failed with the exit status and the last line of stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from segdeploy.core.config import BenchConfig
from segdeploy.core.errors import BackendUnavailable, SegdeployError
from segdeploy.core.rundir import RunDir
from segdeploy.core.size import input_hw
from segdeploy.runtime.variants import RuntimeContext, Variant, build_runner, load_plugins, runner_device
from segdeploy.bench.memory import DeviceMemorySampler, current_rss_mb, peak_rss_mb
from segdeploy.bench.timing import WarmupPolicy, latency_summary, make_timer, throughput_ips, warm_up


def cell_input(batch_size: int, size: int | list[int], seed: int = 0, input_format: str = "normalized") -> np.ndarray:
    """The benchmark input: identical for every backend of a run (seeded), float32 NCHW at the run's H, W;
    for a deploy graph (input_format "uint8_nhwc") seeded uint8 N x H x W x 3 images: bytes in, mask out."""
    rng = np.random.default_rng(seed)
    if input_format == "uint8_nhwc":
        return rng.integers(0, 256, (batch_size, *input_hw(size), 3), dtype=np.uint8)
    return rng.standard_normal((batch_size, 3, *input_hw(size)), dtype=np.float32)


def _is_oom(exc: BaseException) -> bool:
    from segdeploy.core.errors import is_out_of_memory

    return is_out_of_memory(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def failure_row(variant: Variant, device: str, batch_size: int, status: str, **extra: Any) -> dict[str, Any]:
    """The row of a cell, before (or instead of) any measurement: every row of bench.json starts here."""
    return {"backend": variant.backend, "variant": variant.name, "precision": variant.precision,
            "graph": variant.graph, "device": device, "batch_size": batch_size, "status": status,
            "latency_ms": None, "throughput_ips": None, "peak_memory_mb": None, "memory_kind": None, **extra}


def variant_from_spec(spec: dict[str, Any]) -> Variant:
    raw = spec["variant"]
    return Variant(raw["backend"], tuple(raw["modifiers"]), raw["graph"])


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one cell in this process; the result row always comes back (status says how it went)."""
    load_plugins(spec.get("plugins", []))
    variant = variant_from_spec(spec)
    device, batch_size = runner_device(variant, spec["device"]), spec["batch_size"]
    row = failure_row(variant, device, batch_size, "ok", include_transfer=spec.get("include_transfer", False))
    cuda = device.startswith("cuda")
    sampler = DeviceMemorySampler(_device_index(device)) if cuda else None  # baseline before any CUDA use
    if cuda:
        from segdeploy.core.env import gpu_clocks

        row["sm_clock_mhz_at_start"] = gpu_clocks(_device_index(device)).get("sm_clock_mhz")
    rss_before_model = current_rss_mb()
    runner = None
    try:
        runner = build_runner(variant, RuntimeContext(RunDir(Path(spec["run_dir"])), spec["device"],
                                                      spec.get("threads")))
        if cuda and "torch" in sys.modules:
            sys.modules["torch"].cuda.reset_peak_memory_stats(device)
        images = cell_input(batch_size, spec["size"], spec.get("seed", 0), runner.input_format)
        row["input_format"], row["output_format"] = runner.input_format, runner.output_format
        row.update(_timed(runner, images, spec, device, sampler))
    except BackendUnavailable as exc:
        row["status"] = f"unavailable: {exc}"
    except BaseException as exc:  # noqa: BLE001 - a cell's failure must never end the sweep
        if isinstance(exc, KeyboardInterrupt):
            raise
        if _is_oom(exc):
            row["status"] = "oom"
        elif isinstance(exc, SegdeployError):
            row["status"] = f"failed: {exc}"
        else:
            row["status"] = f"failed: {_first_line(exc)}"
            row["traceback"] = traceback.format_exc(limit=8)
    row.update(_memory(row, device, sampler, rss_before_model))
    if runner is not None:
        try:
            runner.close()
        except Exception:  # noqa: BLE001
            pass
    return row


def _timed(runner, images: np.ndarray, spec: dict[str, Any], device: str,
           sampler: DeviceMemorySampler | None) -> dict[str, Any]:
    """Warm up until stable, then time `iters` iterations of one step (see bench/timing.py)."""
    if spec.get("include_transfer"):
        def step():  # host -> device, compute, device -> host, every iteration
            return runner.to_numpy(runner.run(runner.prepare(images)))
    else:
        prepared = runner.prepare(images)  # on the device once, outside the timed region

        def step():
            return runner.run(prepared)
    timer = make_timer(device, stream_ordered=runner.stream_ordered)
    if sampler:
        sampler.start()
    try:
        warm = warm_up(step, runner.synchronize, timer, WarmupPolicy(**spec["warmup"]))
    finally:
        if sampler:
            sampler.stop()
    latencies = np.array([timer.measure(step, runner.synchronize) for _ in range(spec["iters"])])
    if sampler:
        sampler.sample()
    result = {"latency_ms": latency_summary(latencies), "throughput_ips": throughput_ips(len(images), latencies),
              "iterations": int(len(latencies)), "warmup_iterations": warm.iterations,
              "warmup_stable": warm.stable, "timer": timer.kind}
    if spec.get("keep_latencies"):
        result["latencies_ms"] = latencies.tolist()
    if hasattr(runner, "providers_in_use"):
        result["providers_in_use"] = runner.providers_in_use
    result.update(runner.row_info())  # e.g. TensorRT profile and engine memory, CUDA graph captured or not
    return result


def _device_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def _memory(row: dict, device: str, sampler: DeviceMemorySampler | None, rss_before_model: float | None) -> dict:
    """The row's headline memory figure and, in `memory`, every labelled figure measured. On a GPU up to three:
    the device peak (NVML, see DeviceMemorySampler for what it includes), torch's allocator peak (torch tensors
    only: for TensorRT the input and output buffers), and an engine's own need (`engine_memory_mb`: TensorRT
    activations for the profile in use plus weights, which TensorRT allocates outside torch)."""
    memory: dict[str, Any] = {"host_peak_rss_mb": peak_rss_mb(), "host_rss_before_model_mb": rss_before_model}
    for key in ("engine_memory_mb", "engine_memory_kind"):
        if key in row:
            memory[key] = row.pop(key)
    torch = sys.modules.get("torch")
    if sampler is not None:
        memory["device_peak_mb"] = sampler.peak_mb
        memory["device_kind"] = sampler.kind
        if torch is not None and torch.cuda.is_initialized():
            memory["torch_allocator_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            memory["torch_reserved_peak_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
        if memory["device_peak_mb"] is not None:
            return {"peak_memory_mb": memory["device_peak_mb"], "memory_kind": sampler.kind, "memory": memory}
        if "torch_allocator_peak_mb" in memory:
            return {"peak_memory_mb": memory["torch_allocator_peak_mb"], "memory_kind": "torch_allocator_peak",
                    "memory": memory}
        return {"peak_memory_mb": None, "memory_kind": "unavailable", "memory": memory}
    return {"peak_memory_mb": memory["host_peak_rss_mb"], "memory_kind": "process_peak_rss", "memory": memory}


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run_cell_subprocess(spec: dict[str, Any], timeout_s: float | None = None,
                        python: str = sys.executable) -> dict[str, Any]:
    """Run one cell in a fresh interpreter; a child that dies or hangs becomes a `failed` row."""
    project_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([project_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    with tempfile.TemporaryDirectory(prefix="segdeploy-cell-") as tmp:
        spec_path, out_path, err_path = Path(tmp, "spec.json"), Path(tmp, "out.json"), Path(tmp, "stderr.txt")
        spec_path.write_text(json.dumps(spec))
        started = time.perf_counter()
        with open(err_path, "wb") as err:
            try:
                proc = subprocess.run([python, "-m", "segdeploy.bench.cell", str(spec_path), str(out_path)],
                                      stdout=subprocess.DEVNULL, stderr=err, env=env, timeout=timeout_s)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = None
        if out_path.is_file():
            row = json.loads(out_path.read_text())
        else:
            variant = variant_from_spec(spec)
            why = f"timed out after {timeout_s:.0f} s" if code is None else _exit_description(code)
            tail = _tail(err_path)
            row = failure_row(variant, runner_device(variant, spec["device"]), spec["batch_size"],
                              f"failed: child process {why}" + (f" ({tail})" if tail else ""),
                              include_transfer=spec.get("include_transfer", False))
        row["cell_seconds"] = time.perf_counter() - started
        return row


def cell_spec(variant: Variant, run_dir: Path, cfg: BenchConfig, batch_size: int, size: int | list[int],
              warmup: WarmupPolicy, keep_latencies: bool = False) -> dict[str, Any]:
    """Everything a cell needs, as JSON (it may run in another process)."""
    return {"variant": asdict(variant), "run_dir": str(run_dir), "device": cfg.device, "batch_size": batch_size,
            "size": size, "threads": cfg.threads, "warmup": asdict(warmup), "iters": cfg.iters,
            "include_transfer": cfg.include_transfer, "seed": cfg.seed, "plugins": [str(p) for p in cfg.plugins],
            "keep_latencies": keep_latencies}


def main(argv: list[str]) -> int:
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    row = run_cell(json.loads(spec_path.read_text()))
    from segdeploy.core import fileio

    fileio.write_json(out_path, row)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
