"""`segdeploy export`, `segdeploy parity`, `segdeploy bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from segdeploy.cli.common import DEFAULTS, RunArg, as_list, handle_errors, open_with
from segdeploy.core.errors import EXIT_CHECK_FAILED
from segdeploy.core.progress import console


@handle_errors
def export(
    run_dir: Path = RunArg,
    opset: Optional[int] = typer.Option(None, help=f"ONNX opset. [default: {DEFAULTS.export.opset}]"),
    exporter: Optional[str] = typer.Option(None, help=f"torchscript or dynamo. [default: {DEFAULTS.export.exporter}]"),
    precision: Optional[str] = typer.Option(None, help="Comma-separated graph precisions: fp32, fp16, int8. [default: fp32]"),
    calib_images: Optional[int] = typer.Option(None, "--calib-images", help=f"INT8: training images to calibrate on. [default: {DEFAULTS.export.calib_images}]"),
    calib_method: Optional[str] = typer.Option(None, "--calib-method", help=f"INT8: minmax, entropy or percentile. [default: {DEFAULTS.export.calib_method}]"),
    int8_activations: Optional[str] = typer.Option(None, "--int8-activations", help="INT8: int8 (symmetric, for TensorRT) or uint8 (faster on ONNX Runtime x86 CPUs). [default: int8]"),
    simplify: Optional[bool] = typer.Option(None, "--simplify/--no-simplify", help="onnxslim the FP32 graph (kept only if its logits match). [default: on]"),
    io_fp16: Optional[bool] = typer.Option(None, "--io-fp16/--no-io-fp16", help="FP16: make the graph input/output FP16 too. [default: off]"),
    trt: bool = typer.Option(False, "--trt", help="Also build a TensorRT engine per precision -> RUN/engines/."),
    rebuild: bool = typer.Option(False, "--rebuild", help="TensorRT: rebuild engines even if the manifest matches."),
    min_batch: Optional[int] = typer.Option(None, "--min-batch", help=f"TensorRT: smallest batch. [default: {DEFAULTS.engine.min_batch}]"),
    opt_batch: Optional[str] = typer.Option(None, "--opt-batch", help="TensorRT: batch size(s) to tune for, comma-separated: one "
                                            "optimisation profile each (pass bench's --batch-sizes). [default: 1]"),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help=f"TensorRT: largest batch. [default: {DEFAULTS.engine.max_batch}]"),
    workspace_gb: Optional[float] = typer.Option(None, "--workspace-gb", help=f"TensorRT workspace memory limit (GiB). [default: {DEFAULTS.engine.workspace_gb}]"),
    tf32: Optional[bool] = typer.Option(None, "--tf32/--no-tf32", help="TensorRT: let the fp32 engine use TF32 (recorded in "
                                        "the manifest). [default: off: fp32 means FP32]"),
    opt_level: Optional[int] = typer.Option(None, "--opt-level", help="TensorRT builder optimisation level 0-5. [default: TensorRT's, 3]"),
):
    """Export the best checkpoint to RUN/export/model[.fp16|.int8].onnx (dynamic batch) with JSON sidecars;
    with --trt also TensorRT engines RUN/engines/<precision>.plan, built through Polygraphy (settings: the
    engine section of the config)."""
    from segdeploy.core.config import apply_overrides, parse_list
    from segdeploy.export.onnx import export_graphs

    run, cfg = open_with(run_dir, "export", opset=opset, exporter=exporter, precisions=as_list(precision),
                         calib_images=calib_images, calib_method=calib_method, int8_activations=int8_activations,
                         simplify=simplify, io_fp16=io_fp16)
    cfg = apply_overrides(cfg, {"engine.min_batch": min_batch, "engine.opt_batches": parse_list(opt_batch, int),
                                "engine.max_batch": max_batch, "engine.workspace_gb": workspace_gb,
                                "engine.tf32": tf32, "engine.optimization_level": opt_level})
    from segdeploy.engines.tensorrt import validate

    validate(cfg.engine)  # also without --trt: a wrong value is never silently ignored
    if trt:  # fail before minutes of export and calibration if TensorRT is missing
        from segdeploy.engines.tensorrt import import_tensorrt
        from segdeploy.engines.trt_build import import_polygraphy

        import_tensorrt()
        import_polygraphy()
    for path in export_graphs(run, cfg.export).values():
        console.print(f"[green]exported[/] {path} (+ {path.with_suffix('.json').name})")
    if trt:
        from segdeploy.engines.trt_build import build_engines

        precisions = list(dict.fromkeys(["fp32", *cfg.export.precisions]))
        for name, (engine, built) in build_engines(run, precisions, cfg.engine, rebuild=rebuild).items():
            console.print(f"[green]{'built' if built else 'up to date'}[/] {engine} ({name})")


@handle_errors
def parity(
    run_dir: Path = RunArg,
    backends: Optional[str] = typer.Option(None, help="Comma-separated runtime variants to compare with torch fp32 "
                                           f"(grammar as in `bench --help`). [default: {','.join(DEFAULTS.parity.backends)}]"),
    precision: Optional[str] = typer.Option(None, help="Comma-separated graph precisions for exported backends. [default: fp32]"),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use at most this many validation images."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=f"[default: {DEFAULTS.parity.batch_size}]"),
    device: Optional[str] = typer.Option(None, help=f"auto, cpu or cuda. [default: {DEFAULTS.parity.device}]"),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Minimum argmax agreement (fraction). [default: per precision]"),
    max_miou_delta: Optional[float] = typer.Option(None, "--max-miou-delta", help="Maximum |mIoU delta| (fraction). [default: per precision]"),
    atol: Optional[float] = typer.Option(None, help="Maximum |logit difference|. [default: 1e-2 for fp32, unchecked below]"),
    threads: Optional[int] = typer.Option(None, help="CPU threads."),
):
    """Compare runtime variants with torch fp32 on the validation images -> RUN/parity.json; exit 1 if any
    variant that ran misses its tolerance (unavailable ones are listed, not verified)."""
    from segdeploy.evaluation.parity import run_parity
    from segdeploy.evaluation.tables import feature_lines, parity_failed, parity_table

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
    backends: Optional[str] = typer.Option(None, help="Comma-separated runtime variants BACKEND[+MOD...]: torch "
                                           "(+fp16 +bf16 +tf32 +cl +compile[=MODE] +graph), onnxruntime (+cuda +trt), openvino "
                                           "(+bf16 +throughput), tensorrt (+graph); presets torch-all, ort-all, ov-all, "
                                           "trt-all, all. Unavailable "
                                           f"ones are reported, not fatal. [default: {','.join(DEFAULTS.bench.backends)}]"),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="Comma-separated batch sizes, or 'auto' (1, 2, "
                                              "4, ... until the first OOM or --max-batch). [default: 1,8]"),
    precision: Optional[str] = typer.Option(None, help="Graph precision(s) for exported backends, comma-separated; "
                                            "torch's arithmetic is a modifier (torch+fp16). [default: fp32]"),
    warmup: Optional[int] = typer.Option(None, help=f"Minimum warm-up iterations; warm-up then goes on until stable. [default: {DEFAULTS.bench.warmup}]"),
    warmup_window: Optional[int] = typer.Option(None, "--warmup-window", help="Warm-up is stable when the median of the "
                                                f"last window is within --warmup-rtol of the window before it. [default: {DEFAULTS.bench.warmup_window}]"),
    warmup_rtol: Optional[float] = typer.Option(None, "--warmup-rtol", help=f"Relative tolerance for a stable warm-up. [default: {DEFAULTS.bench.warmup_rtol}]"),
    max_warmup: Optional[int] = typer.Option(None, "--max-warmup", help="Give up waiting for stability after this many "
                                             f"warm-up iterations (the row says 'unstable'). [default: {DEFAULTS.bench.max_warmup}]"),
    iters: Optional[int] = typer.Option(None, help=f"Timed iterations per cell. [default: {DEFAULTS.bench.iters}]"),
    device: Optional[str] = typer.Option(None, help=f"auto, cpu or cuda. [default: {DEFAULTS.bench.device}]"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch, onnxruntime and openvino [default: torch's]."),
    include_transfer: Optional[bool] = typer.Option(None, "--include-transfer/--no-include-transfer", help="Time the "
                                                    "host->device input and device->host output copies too. [default: off]"),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help=f"Largest batch size `--batch-sizes auto` tries. [default: {DEFAULTS.bench.max_batch}]"),
    isolate: Optional[bool] = typer.Option(None, "--isolate/--in-process", help="Measure each (variant, batch) cell in a "
                                           "fresh subprocess (memory figures need it), or all in this process. [default: isolate]"),
    cell_timeout: Optional[float] = typer.Option(None, "--cell-timeout", help="Seconds before a cell's subprocess is "
                                                 f"stopped and recorded as failed. [default: {DEFAULTS.bench.cell_timeout_s:.0f}]"),
    accuracy: Optional[bool] = typer.Option(None, "--accuracy/--no-accuracy", help="Measure each variant's mIoU and argmax "
                                            "agreement with torch fp32 on the validation split. [default: on]"),
    val_images: Optional[int] = typer.Option(None, "--val-images", help="Validation images for the accuracy columns. [default: all]"),
    plugin: Optional[list[Path]] = typer.Option(None, "--plugin", help="Python file that registers extra backends "
                                                "in segdeploy.runtime.variants.BACKENDS."),
):
    """Latency (p50/p90/p99), throughput, memory and TFLOP/s per runtime variant and batch size, next to each
    variant's mIoU and agreement -> RUN/bench.json, bench.md, latency_vs_batch.png, throughput_vs_batch.png,
    accuracy_vs_latency.png."""
    from segdeploy.bench.report import console_table
    from segdeploy.bench.sweep import parse_batch_sizes, run_bench

    run, cfg = open_with(run_dir, "bench", backends=as_list(backends), precisions=as_list(precision),
                          batch_sizes=parse_batch_sizes(batch_sizes) if batch_sizes is not None else None, warmup=warmup,
                          warmup_window=warmup_window, warmup_rtol=warmup_rtol, max_warmup=max_warmup, iters=iters,
                          device=device, threads=threads, include_transfer=include_transfer, max_batch=max_batch,
                          isolate=isolate, cell_timeout_s=cell_timeout, accuracy=accuracy, val_images=val_images,
                          plugins=[str(p) for p in plugin] if plugin else None)
    report = run_bench(run, cfg.bench)
    console.print(console_table(report))
    console.print(f"wrote {run.bench}" + "".join(f", {Path(p).name}" for p in report.get("reports", [])))
