"""`segdeploy bench`: latency, throughput, memory and achieved TFLOP/s per backend variant x batch size.

Each cell runs in a fresh subprocess by default (bench_cell.py), on the same seeded input, already on
the device; the sweep records OOMs, dead children and unavailable backends as rows and goes on.
Reports: RUN/bench.json, RUN/bench.md and plots (bench_report.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from segdeploy.core import fileio
from segdeploy.bench.cell import cell_spec, run_cell, run_cell_subprocess
from segdeploy.runtime.variants import Variant, expand_backends, load_plugins, unavailable_reason
from segdeploy.core.errors import ConfigError
from segdeploy.core.progress import console, make_progress
from segdeploy.core.rundir import RunDir
from segdeploy.bench.timing import WarmupPolicy

AUTO_MAX_BATCH = 1024


def parse_batch_sizes(text: str | list[int]) -> list[int] | str:
    """'1,2,4' -> [1, 2, 4]; 'auto' -> 'auto' (doubling from 1 until the first OOM)."""
    if isinstance(text, list):
        sizes = text
    elif text.strip().lower() == "auto":
        return "auto"
    else:
        try:
            sizes = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ConfigError(f"--batch-sizes must be comma-separated integers or 'auto', got {text!r}") from None
    if not sizes or any(b < 1 for b in sizes):
        raise ConfigError(f"batch sizes must be integers >= 1, got {text!r}")
    return sizes


def model_flops(run: RunDir, size: int) -> float | None:
    """FLOPs of one image through the model (torch.utils.flop_counter; a multiply-add counts 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from segdeploy.core.rundir import load_model

    model, _, _ = load_model(run)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, size, size))
    total = counter.get_total_flops()
    return float(total) if total else None


def _unavailable_row(variant: Variant, device: str, batch_size: int, reason: str) -> dict[str, Any]:
    return {"backend": variant.backend, "variant": variant.name, "precision": variant.precision, "device": device,
            "batch_size": batch_size, "status": f"unavailable: {reason}", "latency_ms": None,
            "throughput_ips": None, "peak_memory_mb": None, "memory_kind": None, "tflops": None}


def run_bench(run: RunDir, backends: list[str], batch_sizes: list[int] | str = (1, 8), precision: str = "fp32",
              warmup: int = 10, iters: int = 50, device: str = "cpu", threads: int | None = None, *,
              precisions: list[str] | None = None, include_transfer: bool = False, isolate: bool = True,
              warmup_window: int = 5, warmup_rtol: float = 0.05, max_warmup: int = 200,
              compile_mode: str = "default", max_batch: int = AUTO_MAX_BATCH, cell_timeout_s: float | None = 1800,
              plugins: list[str | Path] | None = None, seed: int = 0, write_reports: bool = True,
              on_row: Callable[[dict], None] | None = None) -> dict:
    import torch

    from segdeploy.core.env import environment

    cfg = run.load_config()
    if threads:
        torch.set_num_threads(threads)
    threads = threads or torch.get_num_threads()
    if iters < 1 or warmup < 0:
        raise ConfigError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    plugins = [str(p) for p in plugins or []]
    load_plugins(plugins)
    precisions = precisions or [precision]
    for name in precisions:
        run.onnx_path(name)  # an unknown precision is a one-line error before any cell runs
    variants = expand_backends(backends, device, precisions, compile_mode)
    for variant in variants:
        if variant.backend == "onnxruntime":  # a missing export is the user's to fix, not a failed cell
            run.require(run.onnx_path(variant.precision), f"export --precision {variant.precision}")
    sizes = parse_batch_sizes(list(batch_sizes) if not isinstance(batch_sizes, str) else batch_sizes)
    auto = sizes == "auto"
    policy = WarmupPolicy(min_iters=warmup, window=warmup_window, rtol=warmup_rtol, max_iters=max_warmup)
    size = cfg.data.size
    # the parent must not hold a CUDA context while isolated cells measure device memory
    env = environment(threads, allow_torch_cuda=not isolate)
    flops = model_flops(run, size)

    results: list[dict] = []
    with make_progress() as progress:
        task = progress.add_task("bench", total=None if auto else len(variants) * len(sizes), info="")
        for variant in variants:
            queue = [1] if auto else list(sizes)
            while queue:
                batch = queue.pop(0)
                progress.update(task, info=f"{variant.name} batch {batch}")
                reason = unavailable_reason(variant, device)
                if reason:
                    row = _unavailable_row(variant, device, batch, reason)
                else:
                    onnx = run.onnx_path(variant.precision) if variant.backend != "torch" and \
                        variant.precision in ("fp32", "fp16", "int8") else None
                    spec = cell_spec(variant, run.path.resolve(), device, batch, size, threads=threads,
                                     onnx_path=onnx.resolve() if onnx else None, warmup=policy, iters=iters,
                                     include_transfer=include_transfer, seed=seed, plugins=plugins)
                    row = run_cell_subprocess(spec, cell_timeout_s) if isolate else run_cell(spec)
                    row["isolated"] = isolate
                    row["tflops"] = (flops * row["throughput_ips"] / 1e12
                                     if flops and row.get("throughput_ips") else None)
                results.append(row)
                if on_row:
                    on_row(row)
                progress.advance(task)
                _print_row(row)
                if auto and row["status"] == "ok" and batch * 2 <= max_batch:
                    queue.append(batch * 2)
    report = {
        "environment": env, "input_size": size,
        "model": {"name": cfg.model.name, "encoder": cfg.model.encoder,
                  "output_stride": cfg.model.output_stride if cfg.model.name.startswith("deeplab") else None,
                  "flops_per_image": flops,
                  "flops_counter": "torch.utils.flop_counter.FlopCounterMode (multiply-add = 2 FLOPs)"},
        "settings": {"device": device, "threads": threads,
                     "timer": "cuda_events" if device.startswith("cuda") else "host_clock_after_sync", "iters": iters, "warmup": policy.__dict__,
                     "include_transfer": include_transfer, "isolation": "subprocess" if isolate else "none",
                     "batch_sizes": "auto" if auto else sizes, "max_batch": max_batch if auto else None,
                     "seed": seed, "input": "seeded standard-normal float32 NCHW, identical for every backend"},
        "results": results,
    }
    fileio.write_json(run.bench, report)
    if write_reports:
        from segdeploy.bench.report import write_reports as write_all

        report["reports"] = [str(p) for p in write_all(run, report)]
    return report


def _print_row(row: dict) -> None:
    if row["status"] == "ok":
        console.print(f"{row['variant']}/{row['precision']} batch {row['batch_size']}: "
                      f"p50 {row['latency_ms']['p50']:.2f} ms, {row['throughput_ips']:.1f} img/s", highlight=False)
    else:
        console.print(f"{row['variant']}/{row['precision']} batch {row['batch_size']}: {row['status']}",
                      highlight=False)
