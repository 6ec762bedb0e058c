"""`segdeploy bench`: latency, throughput and peak memory per backend and batch size."""

from __future__ import annotations

import numpy as np

from segdeploy import fileio
from segdeploy.env import environment
from segdeploy.errors import SegdeployError
from segdeploy.progress import console
from segdeploy.runners import load_runner
from segdeploy.rundir import RunDir
from segdeploy.timing import latency_summary, peak_rss_mb, time_iterations


def memory_reading(backend: str, device: str) -> tuple[float, str]:
    if device.startswith("cuda") and backend == "torch":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20, "torch_allocator_peak"
    return peak_rss_mb(), "process_peak_rss"


def bench_cell(runner, images: np.ndarray, warmup: int, iters: int) -> dict:
    """Time one (runner, batch) cell: the input is prepared once, outside the timed region."""
    prepared = runner.prepare(images)
    latencies = time_iterations(lambda: runner.run(prepared), runner.synchronize, warmup, iters)
    summary = latency_summary(latencies)
    return {
        "latency_ms": summary,
        "throughput_ips": images.shape[0] * 1e3 / summary["mean"],
        "iterations": iters, "warmup": warmup,
    }


def run_bench(run: RunDir, backends: list[str], batch_sizes: list[int], precision: str = "fp32",
              warmup: int = 10, iters: int = 50, device: str = "cpu", threads: int | None = None) -> dict:
    import torch

    cfg = run.load_config()
    if threads:
        torch.set_num_threads(threads)
    threads = threads or torch.get_num_threads()
    size = cfg.data.size
    rng = np.random.default_rng(0)
    results = []
    for backend in backends:
        runner = load_runner(backend, run, precision=precision, device=device, threads=threads)
        for batch_size in batch_sizes:
            if batch_size < 1:
                raise SegdeployError(f"batch size must be >= 1, got {batch_size}")
            images = rng.standard_normal((batch_size, 3, size, size), dtype=np.float32)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            cell = bench_cell(runner, images, warmup, iters)
            memory, kind = memory_reading(backend, device)
            results.append({"backend": backend, "precision": precision, "device": device,
                            "batch_size": batch_size, **cell, "peak_memory_mb": memory, "memory_kind": kind})
            console.print(f"{backend}/{precision} batch {batch_size}: p50 {cell['latency_ms']['p50']:.2f} ms, "
                          f"{cell['throughput_ips']:.1f} img/s")
        runner.close()
    report = {"environment": environment(threads), "input_size": size,
              "model": {"name": cfg.model.name, "encoder": cfg.model.encoder}, "results": results}
    fileio.write_json(run.bench, report)
    return report
