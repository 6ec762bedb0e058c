"""The `segdeploy` command line: train -> eval -> export -> parity -> bench."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from segdeploy.core.errors import WRITE_ERRNOS, SegdeployError, write_error_message
from segdeploy.core.progress import console, err_console

app = typer.Typer(
    help="Train, export, check and benchmark semantic-segmentation models (PyTorch -> ONNX -> TensorRT).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors.")):
    state["debug"] = debug


def handle_errors(func):
    """Turn SegdeployError into one line on stderr and its exit code; --debug shows the traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SegdeployError as exc:
            if state["debug"]:
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            if exc.hint:
                err_console.print(f"hint: {escape(exc.hint)}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            if state["debug"] or exc.errno not in WRITE_ERRNOS:
                raise
            err_console.print(f"[bold red]error:[/] {escape(write_error_message(exc))}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]: files already written are complete "
                              "(continue a training run with `segdeploy train --resume RUN`)")
            raise typer.Exit(130) from None

    return wrapper


RunArg = typer.Argument(..., help="Run directory written by `segdeploy train`.", show_default=False)


def _resolve_device(device: str) -> str:
    from segdeploy.core.env import resolve_device

    return resolve_device(device)


@app.command()
@handle_errors
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config; flags override it."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run directory to create [default: runs/<dataset>-<model>-<encoder>]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    dataset: Optional[str] = typer.Option(None, help="Dataset: synthetic, folder, kvasir, voc. [default: synthetic]"),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset folder (not needed for synthetic)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classes for folder/synthetic data (folder default 2, synthetic 4)."),
    size: Optional[int] = typer.Option(None, help="Square input size in pixels. [default: 256]"),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use at most this many images per split."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Random horizontal flips. [default: off]"),
    model: Optional[str] = typer.Option(None, help="Model: unet, deeplabv3, deeplabv3plus, sam2. [default: unet]"),
    encoder: Optional[str] = typer.Option(None, help="Encoder: resnet18, resnet34, resnet50, resnet101; sam2: hiera-t, hiera-s, hiera-b+, hiera-l. [default: resnet18]"),
    encoder_weights: Optional[str] = typer.Option(None, "--encoder-weights", help="imagenet, none or a file path; sam2: none, a SAM2/SAM2.1 .pt file or a Hugging Face id (facebook/sam2.1-hiera-tiny). [default: none]"),
    output_stride: Optional[int] = typer.Option(None, "--output-stride", help="DeepLab output stride, 8 or 16. [default: 16]"),
    head: Optional[str] = typer.Option(None, help="sam2 head: conv (stride-16 features) or fpn (strides 4/8/16). [default: conv]"),
    feature_cache: Optional[bool] = typer.Option(None, "--feature-cache/--no-feature-cache", help="Frozen encoders (sam2): encode each image once, train the head from cached FP16 features (off with --augment). [default: on]"),
    feature_cache_mb: Optional[int] = typer.Option(None, "--feature-cache-mb", help="Keep the feature cache in memory up to this size, else in a file under RUN/cache/. [default: 4096]"),
    epochs: Optional[int] = typer.Option(None, help="Epochs. [default: 50]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size. [default: 16]"),
    lr: Optional[float] = typer.Option(None, help="Learning rate. [default: 1e-4]"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Weight decay. [default: 1e-4]"),
    optimizer: Optional[str] = typer.Option(None, help="adamw or adam. [default: adamw]"),
    loss: Optional[str] = typer.Option(None, help="ce or dice-ce (0.5 CE + 0.5 soft Dice). [default: ce]"),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing", help="CE label smoothing. [default: 0]"),
    scheduler: Optional[str] = typer.Option(None, help="none or cosine. [default: none]"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda. [default: auto]"),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision on CUDA. [default: on]"),
    seed: Optional[int] = typer.Option(None, help="Random seed. [default: 0]"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="At most this many optimiser steps per epoch."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    name: Optional[str] = typer.Option(None, help="Run name recorded in the config."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run directory RUN from its last complete epoch (checkpoints/last.pt), with its own config; only --device and --threads may be given with it.", show_default=False),
):
    """Train a model; writes config.toml, checkpoints/, history.csv into the run directory."""
    from segdeploy.core.config import Config, apply_overrides, load_config
    from segdeploy.training.loop import resume_run
    from segdeploy.training.loop import train as train_run

    if resume is not None:
        fixed = {"--config": config, "--output": output, "--overwrite": overwrite or None, "--dataset": dataset,
                 "--data-root": data_root, "--num-classes": num_classes, "--size": size,
                 "--max-images": max_images, "--augment": augment, "--model": model, "--encoder": encoder,
                 "--encoder-weights": encoder_weights, "--output-stride": output_stride, "--epochs": epochs,
                 "--batch-size": batch_size, "--lr": lr, "--weight-decay": weight_decay,
                 "--optimizer": optimizer, "--loss": loss, "--label-smoothing": label_smoothing,
                 "--scheduler": scheduler, "--amp": amp, "--seed": seed, "--max-steps": max_steps, "--name": name}
        given = [flag for flag, value in fixed.items() if value is not None]
        if given:
            raise SegdeployError(f"--resume continues {resume} with its own config.toml; drop {', '.join(given)} "
                                 "(only --device and --threads may change)")
        run = resume_run(resume, device=device, threads=threads)
        console.print(f"[green]done[/]: {run.path} (history.csv, checkpoints/best.pt)")
        return

    cfg = load_config(config) if config else Config()
    cfg = apply_overrides(cfg, {
        "data.dataset": dataset, "data.root": data_root, "data.num_classes": num_classes, "data.size": size,
        "data.max_images": max_images, "data.augment": augment,
        "model.name": model, "model.encoder": encoder, "model.encoder_weights": encoder_weights,
        "model.output_stride": output_stride, "model.head": head,
        "train.feature_cache": feature_cache, "train.feature_cache_mb": feature_cache_mb,
        "train.epochs": epochs, "train.batch_size": batch_size, "train.lr": lr,
        "train.weight_decay": weight_decay, "train.optimizer": optimizer, "train.loss": loss,
        "train.label_smoothing": label_smoothing, "train.scheduler": scheduler, "train.device": device,
        "train.amp": amp, "train.seed": seed, "train.max_steps": max_steps, "train.threads": threads,
    })
    if name:
        cfg.name = name
    output = output or Path("runs") / (cfg.name or f"{cfg.data.dataset}-{cfg.model.name}-{cfg.model.encoder}")
    run = train_run(cfg, output, overwrite=overwrite)
    console.print(f"[green]done[/]: {run.path} (history.csv, checkpoints/best.pt)")


@app.command("eval")
@handle_errors
def eval_(
    run_dir: Path = RunArg,
    backend: str = typer.Option("torch", help="torch or onnxruntime (any registered runner)."),
    precision: str = typer.Option("fp32", help="Graph precision for exported backends."),
    split: str = typer.Option("val", help="train or val."),
    dataset: Optional[str] = typer.Option(None, help="Evaluate on another dataset (same classes) [default: the run's]."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Folder of that dataset [default: the run's]."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use at most this many images."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Write the PNG figures."),
    top_k: int = typer.Option(4, "--top-k", help="Images in best.png and worst.png."),
    device: str = typer.Option("cpu", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(8, "--batch-size"),
    threads: Optional[int] = typer.Option(None, help="CPU threads."),
):
    """Evaluate a run: pixel accuracy, mIoU, mean Dice, HD95, per-class and per-image metrics, figures
    -> RUN/eval/<backend>-<precision>-<dataset>-<split>/ (torch in-domain also -> RUN/metrics.json)."""
    from segdeploy.evaluation.evaluate import evaluate
    from segdeploy.core.rundir import RunDir

    run = RunDir.open(run_dir)
    result = evaluate(run, backend, precision, split, device=_resolve_device(device), batch_size=batch_size,
                      threads=threads, dataset=dataset, data_root=data_root, max_images=max_images,
                      figures=figures, top_k=top_k)
    table = Table(title=f"{run.path} on {result['dataset']}/{split}, {result['images']} images ({backend}/{precision})")
    for column in ("class", "IoU %", "Dice %", "Acc %", "HD95 px"):
        table.add_column(column, justify="right" if column != "class" else "left")
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    px = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for cls, values in result["per_class"].items():
        table.add_row(cls, pct(values["iou"]), pct(values["dice"]), pct(values["accuracy"]), px(values["hd95"]))
    table.add_row("[bold]mean", pct(result["miou"]), pct(result["mean_dice"]), f"pixel {pct(result['pixel_accuracy'])}",
                  px(result["hd95"]))
    console.print(table)
    if result["hd95_undefined_pairs"]:
        console.print(f"HD95 undefined for {result['hd95_undefined_pairs']} (image, class) pairs "
                      "(class in only one of truth and prediction); the mean is over the other "
                      f"{result['hd95_pairs']}")
    console.print(f"wrote {run.path / result['eval_dir'] / 'metrics.json'}"
                  + (f" and {run.metrics}" if result["default_result"] else ""))


@app.command()
@handle_errors
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (each evaluated with `segdeploy eval`).", show_default=False),
    output: Path = typer.Option(Path("report"), "--output", "-o", help="Folder for report.md, report.json and figures/."),
):
    """Compare runs: main table, mean +- std over seeds, backends, cross-dataset drops, per-class tables,
    figures -> OUTPUT/report.md (+ report.json, figures/)."""
    from segdeploy.evaluation.report import write_report

    path = write_report(run_dirs, output)
    console.print(f"[green]wrote[/] {path} (+ report.json, figures/)")


@app.command()
@handle_errors
def export(
    run_dir: Path = RunArg,
    opset: Optional[int] = typer.Option(None, help="ONNX opset. [default: 17]"),
    exporter: Optional[str] = typer.Option(None, help="torchscript or dynamo. [default: torchscript]"),
    precision: Optional[str] = typer.Option(None, help="Comma-separated graph precisions: fp32, fp16, int8. [default: fp32]"),
    calib_images: int = typer.Option(64, "--calib-images", help="INT8: training images to calibrate on."),
    calib_method: str = typer.Option("minmax", "--calib-method", help="INT8: minmax, entropy or percentile."),
    int8_activations: str = typer.Option("int8", "--int8-activations", help="INT8: int8 (symmetric, for TensorRT) or uint8 (faster on ONNX Runtime x86 CPUs)."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="onnxslim the FP32 graph (kept only if its logits match)."),
    io_fp16: bool = typer.Option(False, "--io-fp16", help="FP16: make the graph input/output FP16 too."),
    trt: bool = typer.Option(False, "--trt", help="Also build a TensorRT engine per precision -> RUN/engines/."),
    rebuild: bool = typer.Option(False, "--rebuild", help="TensorRT: rebuild engines even if the manifest matches."),
    min_batch: int = typer.Option(1, "--min-batch", help="TensorRT profile: smallest batch."),
    opt_batch: int = typer.Option(1, "--opt-batch", help="TensorRT profile: batch to tune for."),
    max_batch: int = typer.Option(8, "--max-batch", help="TensorRT profile: largest batch."),
    workspace_gb: float = typer.Option(4.0, "--workspace-gb", help="TensorRT workspace memory limit (GiB)."),
):
    """Export the best checkpoint to RUN/export/model[.fp16|.int8].onnx (dynamic batch) with JSON sidecars."""
    from segdeploy.core.config import parse_list
    from segdeploy.export.onnx import export_run
    from segdeploy.core.rundir import RunDir

    run = RunDir.open(run_dir)
    precisions = parse_list(precision) or run.load_config().export.precisions
    if trt:  # fail before minutes of export and calibration if TensorRT is missing
        from segdeploy.engines.tensorrt import import_tensorrt

        import_tensorrt()
    export_run(run, opset=opset, exporter=exporter, precisions=precisions, simplify=simplify,
               calib_images=calib_images, calib_method=calib_method, io_fp16=io_fp16,
               int8_activations=int8_activations)
    for path in [run.onnx_path(p) for p in dict.fromkeys(["fp32", *precisions])]:
        console.print(f"[green]exported[/] {path} (+ {path.with_suffix('.json').name})")
    if trt:
        from segdeploy.engines.tensorrt import BuildOptions, build_engines

        options = BuildOptions(min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                               workspace_gb=workspace_gb)
        for precision, (engine, built) in build_engines(run, precisions, options, rebuild=rebuild).items():
            console.print(f"[green]{'built' if built else 'up to date'}[/] {engine} ({precision})")


@app.command()
@handle_errors
def parity(
    run_dir: Path = RunArg,
    backends: str = typer.Option("onnxruntime", help="Comma-separated backends to compare with torch."),
    precision: str = typer.Option("fp32", help="Comma-separated graph precisions."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use at most this many validation images."),
    batch_size: int = typer.Option(8, "--batch-size"),
    device: str = typer.Option("cpu", help="auto, cpu or cuda."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Minimum argmax agreement (fraction). [default: per precision]"),
    max_miou_delta: Optional[float] = typer.Option(None, "--max-miou-delta", help="Maximum |mIoU delta| (fraction). [default: per precision]"),
    atol: Optional[float] = typer.Option(None, help="Maximum |logit difference|. [default: 1e-2 for fp32]"),
    threads: Optional[int] = typer.Option(None, help="CPU threads."),
):
    """Compare backends with torch on the validation images -> RUN/parity.json; exit 1 if any fails."""
    from dataclasses import replace

    from segdeploy.core.config import parse_list
    from segdeploy.evaluation.parity import DEFAULT_TOLERANCES, run_parity
    from segdeploy.core.rundir import RunDir

    precisions = parse_list(precision)
    tolerances = {}
    for p in precisions:
        tol = DEFAULT_TOLERANCES.get(p)
        if tol is None:
            continue
        tolerances[p] = replace(tol, **{k: v for k, v in {"min_agreement": min_agreement,
                                                          "max_miou_delta": max_miou_delta,
                                                          "max_abs_err": atol}.items() if v is not None})
    report = run_parity(RunDir.open(run_dir), parse_list(backends), precisions, max_images=max_images,
                        batch_size=batch_size, device=_resolve_device(device), tolerances=tolerances,
                        threads=threads)
    table = Table(title=f"parity against torch fp32 ({report['images']} images)")
    for column in ("backend", "precision", "max |err|", "mean |err|", "argmax agree %", "mIoU %", "delta pt", "passed"):
        table.add_column(column, justify="right")
    for r in report["results"]:
        table.add_row(r["backend"], r["precision"], f"{r['max_abs_err']:.2e}", f"{r['mean_abs_err']:.2e}",
                      f"{100 * r['argmax_agreement']:.3f}", f"{100 * r['miou']:.2f}",
                      f"{100 * r['miou_delta']:+.3f}", "[green]yes" if r["passed"] else "[red]NO")
    console.print(table)
    features = report.get("feature_parity")
    if features:
        console.print(f"encoder vision_features ({features['backend']}): max |err| {features['max_abs_err']:.2e}, "
                      f"mean |err| {features['mean_abs_err']:.2e}, relative {features['max_rel_err']:.2e}, "
                      f"passed: {'yes' if features['passed'] else 'NO'}")
    console.print(f"wrote {RunDir(run_dir).parity}")
    if not all(r["passed"] for r in report["results"]) or (features and not features["passed"]):
        raise typer.Exit(1)


@app.command()
@handle_errors
def bench(
    run_dir: Path = RunArg,
    backends: str = typer.Option("torch,onnxruntime", help="Comma-separated backend variants: BACKEND[+MOD...], "
                                 "e.g. torch, torch+cl, torch+bf16, torch+fp16+cl+graph, torch+compile=max-autotune, "
                                 "onnxruntime, onnxruntime+cuda, onnxruntime+trt, tensorrt, tensorrt+graph; "
                                 "presets torch-all, ort-all, all. Unavailable ones are reported, not fatal."),
    batch_sizes: str = typer.Option("1,8", "--batch-sizes", help="Comma-separated batch sizes, or 'auto' (1, 2, 4, ... "
                                    "until the first OOM or --max-batch)."),
    precision: str = typer.Option("fp32", help="Graph precision(s) for exported backends (onnxruntime, tensorrt), "
                                  "comma-separated; torch precision is a variant modifier (torch+fp16)."),
    warmup: int = typer.Option(10, help="Minimum warm-up iterations; warm-up then goes on until stable."),
    warmup_window: int = typer.Option(5, "--warmup-window", help="Warm-up is stable when the median of the last "
                                      "window is within --warmup-rtol of the window before it."),
    warmup_rtol: float = typer.Option(0.05, "--warmup-rtol", help="Relative tolerance for a stable warm-up."),
    max_warmup: int = typer.Option(200, "--max-warmup", help="Give up waiting for stability after this many "
                                   "warm-up iterations (the row says 'unstable')."),
    iters: int = typer.Option(50, help="Timed iterations per cell."),
    device: str = typer.Option("cpu", help="auto, cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch and onnxruntime [default: torch's]."),
    include_transfer: bool = typer.Option(False, "--include-transfer", help="Time host->device input copy and "
                                          "device->host output copy too (default: input already on the device)."),
    compile_mode: str = typer.Option("default", "--compile-mode", help="torch.compile mode for `torch+compile` "
                                     "(default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs)."),
    max_batch: int = typer.Option(1024, "--max-batch", help="Largest batch size `--batch-sizes auto` tries."),
    isolate: bool = typer.Option(True, "--isolate/--in-process", help="Measure each (variant, batch) cell in a "
                                 "fresh subprocess (memory figures need it), or all in this process (faster)."),
    cell_timeout: float = typer.Option(1800, "--cell-timeout", help="Seconds before a cell's subprocess is "
                                       "stopped and recorded as failed."),
    plugin: Optional[list[Path]] = typer.Option(None, "--plugin", help="Python file that registers extra "
                                                "backends in segdeploy.runtime.variants.BENCH_BACKENDS."),
):
    """Latency (p50/p90/p99), throughput, memory and TFLOP/s per backend variant and batch size ->
    RUN/bench.json, RUN/bench.md, RUN/latency_vs_batch.png, throughput_vs_batch.png, accuracy_vs_latency.png."""
    from segdeploy.bench.sweep import parse_batch_sizes, run_bench
    from segdeploy.core.config import parse_list
    from segdeploy.core.rundir import RunDir

    report = run_bench(RunDir.open(run_dir), parse_list(backends), parse_batch_sizes(batch_sizes),
                       warmup=warmup, iters=iters, device=_resolve_device(device), threads=threads,
                       precisions=parse_list(precision), include_transfer=include_transfer, isolate=isolate,
                       warmup_window=warmup_window, warmup_rtol=warmup_rtol, max_warmup=max_warmup,
                       compile_mode=compile_mode, max_batch=max_batch, cell_timeout_s=cell_timeout,
                       plugins=plugin)
    env = report["environment"]
    where = env.get("gpu") if report["settings"]["device"].startswith("cuda") else env["cpu"]
    table = Table(title=f"bench ({where}, {env['torch_threads']} threads)")
    for column in ("variant", "precision", "device", "batch", "status", "p50 ms", "p90 ms", "p99 ms", "img/s",
                   "TFLOP/s", "peak MB", "memory"):
        table.add_column(column, justify="right")
    fmt = lambda v, spec=".2f": "-" if v is None else format(v, spec)  # noqa: E731
    for r in report["results"]:
        lat = r["latency_ms"] or {}
        table.add_row(r["variant"], r["precision"], r["device"], str(r["batch_size"]), escape(r["status"]),
                      fmt(lat.get("p50")), fmt(lat.get("p90")), fmt(lat.get("p99")), fmt(r["throughput_ips"], ".1f"),
                      fmt(r.get("tflops"), ".3f"), fmt(r["peak_memory_mb"], ".0f"), r["memory_kind"] or "-")
    console.print(table)
    console.print(f"wrote {RunDir(run_dir).bench}" + "".join(f", {Path(p).name}" for p in report.get("reports", [])))


@app.command()
@handle_errors
def study(
    study_file: Path = typer.Argument(..., help="Study TOML (see studies/*.toml).", show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the file and show the plan; run nothing."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Study folder [default: <file's folder>/<study name>]."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated run or configuration names to run."),
    summary_only: bool = typer.Option(False, "--summary-only", help="Only rewrite summary.md/csv from the runs on disk."),
):
    """Run a grid of trainings (+ eval, export, parity, bench) from one file; rerun to resume."""
    from segdeploy.core.config import parse_list
    from segdeploy.study.plan import load_study, plan_rows, readiness_warnings, run_study
    from segdeploy.study.summary import write_summary

    plan = load_study(study_file, output)
    table = Table(title=f"study {plan.name}: {len(plan.runs)} runs -> {plan.output}")
    for column in ("run", "configuration", "baseline", "state", "to do"):
        table.add_column(column)
    for row in plan_rows(plan):
        table.add_row(row["run"], row["config"], row["baseline"] or "", row["state"], ", ".join(row["missing"]))
    console.print(table)
    for warning in readiness_warnings(plan):
        console.print(f"[yellow]note[/]: {warning}")
    if dry_run:
        console.print(f"[green]valid[/]: {study_file} ({len(plan.runs)} runs)")
        return
    path = write_summary(plan) if summary_only else run_study(plan, parse_list(only))
    console.print(f"[green]done[/]: {path} (+ summary.csv)")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
