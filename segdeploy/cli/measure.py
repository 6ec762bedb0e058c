"""`segdeploy parity` and `segdeploy bench`: what a run's runtime variants compute and how fast."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from segdeploy.cli.common import (DEFAULTS, DeviceOption, PluginOption, RunArg, as_list, backends_help, handle_errors,
                                  load_plugins, open_with, renamed)
from segdeploy.cli.common import batch_sizes as batch_sizes_option
from segdeploy.core.errors import EXIT_CHECK_FAILED
from segdeploy.core.progress import console


@handle_errors
def parity(
    run_dir: Path = RunArg,
    backends: Optional[str] = typer.Option(None, help="Comma-separated runtime variants to compare with torch fp32: "
                                           f"{backends_help()}. [default: {','.join(DEFAULTS.parity.backends)}]"),
    precision: Optional[str] = typer.Option(None, help="Comma-separated graph precisions for exported backends: fp32, fp16, int8. [default: fp32]"),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use at most this many validation images."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=f"[default: {DEFAULTS.parity.batch_size}]"),
    device: Optional[str] = DeviceOption,
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Minimum argmax agreement (fraction). [default: per precision]"),
    max_miou_delta: Optional[float] = typer.Option(None, "--max-miou-delta", help="Maximum |mIoU delta| (fraction). [default: per precision]"),
    atol: Optional[float] = typer.Option(None, help="Maximum |logit difference|. [default: 1e-2 for fp32, unchecked below]"),
    threads: Optional[int] = typer.Option(None, help="CPU threads."),
    plugin: Optional[list[Path]] = PluginOption,
):
    """Compare runtime variants with torch fp32 on the validation images -> RUN/parity.json; exit 1 if any
    variant that ran misses its tolerance (unavailable ones are listed, not verified)."""
    from segdeploy.evaluation.parity import run_parity
    from segdeploy.evaluation.tables import feature_lines, parity_failed, parity_table

    load_plugins(plugin)
    run, cfg = open_with(run_dir, "parity", backends=as_list(backends), precisions=as_list(precision),
                          max_images=max_images, batch_size=batch_size, device=device, min_agreement=min_agreement,
                          max_miou_delta=max_miou_delta, atol=atol, threads=threads)
    report = run_parity(run, cfg.parity)
    console.print(parity_table(report))
    for line in feature_lines(report):
        console.print(line, highlight=False)
    console.print(f"wrote {run.parity}")
    if parity_failed(report):
        raise typer.Exit(EXIT_CHECK_FAILED)


@handle_errors
def bench(
    run_dir: Path = RunArg,
    backends: Optional[str] = typer.Option(None, help=f"Comma-separated runtime variants: {backends_help()}. Unavailable "
                                           f"ones are reported, not fatal. [default: {','.join(DEFAULTS.bench.backends)}]"),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="Comma-separated batch sizes, or 'auto' (1, 2, "
                                              "4, ... until the first OOM or --auto-max-batch). [default: 1,8]"),
    precision: Optional[str] = typer.Option(None, help="Comma-separated graph precisions for exported backends: fp32, fp16, "
                                            "int8; torch's arithmetic is a modifier (torch+fp16). [default: fp32]"),
    warmup: Optional[int] = typer.Option(None, help=f"Minimum warm-up iterations; warm-up then goes on until stable. [default: {DEFAULTS.bench.warmup}]"),
    warmup_window: Optional[int] = typer.Option(None, "--warmup-window", help="Warm-up is stable when the median of the "
                                                f"last window is within --warmup-rtol of the window before it. [default: {DEFAULTS.bench.warmup_window}]"),
    warmup_rtol: Optional[float] = typer.Option(None, "--warmup-rtol", help=f"Relative tolerance for a stable warm-up. [default: {DEFAULTS.bench.warmup_rtol}]"),
    max_warmup: Optional[int] = typer.Option(None, "--max-warmup", help="Give up waiting for stability after this many "
                                             f"warm-up iterations (the row says 'unstable'). [default: {DEFAULTS.bench.max_warmup}]"),
    rel_ci: Optional[float] = typer.Option(None, "--rel-ci", help="Time each cell until the 95% confidence interval of "
                                           "its median latency is within this fraction of the median (order-statistic "
                                           f"interval; the row says `converged`). [default: {DEFAULTS.bench.rel_ci}]"),
    max_time: Optional[float] = typer.Option(None, "--max-time", help="...or until this many seconds of timed iterations "
                                             f"(the row says `time budget`). [default: {DEFAULTS.bench.max_time_s:g}]"),
    min_iters: Optional[int] = typer.Option(None, "--min-iters", help="Timed iterations per cell at least. "
                                            f"[default: {DEFAULTS.bench.min_iters}]"),
    iters: Optional[int] = typer.Option(None, help="Timed iterations per cell at most (a hard cap, `iteration cap` in the "
                                        "row; with --min-iters equal to it, a fixed count). [default: no cap]"),
    device: Optional[str] = DeviceOption,
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch, onnxruntime and openvino [default: torch's]."),
    include_transfer: Optional[bool] = typer.Option(None, "--include-transfer/--no-include-transfer", help="Time the "
                                                    "host->device input and device->host output copies too. [default: off]"),
    auto_max_batch: Optional[int] = typer.Option(None, "--auto-max-batch", help=f"Largest batch size `--batch-sizes auto` tries. [default: {DEFAULTS.bench.auto_max_batch}]"),
    isolate: Optional[bool] = typer.Option(None, "--isolate/--in-process", help="Measure each (variant, batch) cell in a "
                                           "fresh subprocess (memory figures need it), or all in this process. [default: isolate]"),
    cell_timeout: Optional[float] = typer.Option(None, "--cell-timeout", help="Seconds before a cell's subprocess is "
                                                 f"stopped and recorded as failed. [default: {DEFAULTS.bench.cell_timeout_s:.0f}]"),
    accuracy: Optional[bool] = typer.Option(None, "--accuracy/--no-accuracy", help="Measure each variant's mIoU and argmax "
                                            "agreement with torch fp32 on the validation split. [default: on]"),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Validation images for the accuracy columns. [default: all]"),
    plugin: Optional[list[Path]] = PluginOption,
    val_images: Optional[int] = typer.Option(None, "--val-images", hidden=True, help="Deprecated: --max-images."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", hidden=True, help="Deprecated: --auto-max-batch."),
):
    """Latency (p50 with its 95% confidence interval, p90, p99), throughput, memory and TFLOP/s per runtime variant and batch size, next to each
    variant's mIoU and agreement -> RUN/bench.json, bench.md, latency_vs_batch.png, throughput_vs_batch.png,
    accuracy_vs_latency.png."""
    from segdeploy.bench.report import console_table
    from segdeploy.bench.sweep import run_bench

    max_images = renamed("--max-images", max_images, "--val-images", val_images)
    auto_max_batch = renamed("--auto-max-batch", auto_max_batch, "--max-batch", max_batch)
    run, cfg = open_with(run_dir, "bench", backends=as_list(backends), precisions=as_list(precision),
                          batch_sizes=batch_sizes_option(batch_sizes, "--batch-sizes", allow_auto=True), warmup=warmup,
                          warmup_window=warmup_window, warmup_rtol=warmup_rtol, max_warmup=max_warmup, iters=iters,
                          rel_ci=rel_ci, max_time_s=max_time, min_iters=min_iters,
                          device=device, threads=threads, include_transfer=include_transfer,
                          auto_max_batch=auto_max_batch, isolate=isolate, cell_timeout_s=cell_timeout,
                          accuracy=accuracy, max_images=max_images, plugins=load_plugins(plugin))
    report = run_bench(run, cfg.bench)
    console.print(console_table(report))
    console.print(f"wrote {run.bench}" + "".join(f", {Path(p).name}" for p in report.get("reports", [])))
