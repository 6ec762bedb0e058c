"""The `segdeploy` command line: train -> eval -> export -> parity -> bench."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from segdeploy.errors import SegdeployError
from segdeploy.progress import console, err_console

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
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]: files already written are complete")
            raise typer.Exit(130) from None

    return wrapper


RunArg = typer.Argument(..., help="Run directory written by `segdeploy train`.", show_default=False)


def _resolve_device(device: str) -> str:
    from segdeploy.env import resolve_device

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
    model: Optional[str] = typer.Option(None, help="Model: unet, deeplabv3, deeplabv3plus. [default: unet]"),
    encoder: Optional[str] = typer.Option(None, help="Encoder: resnet18, resnet34, resnet50, resnet101. [default: resnet18]"),
    encoder_weights: Optional[str] = typer.Option(None, "--encoder-weights", help="imagenet, none or a file path. [default: none]"),
    output_stride: Optional[int] = typer.Option(None, "--output-stride", help="DeepLab output stride, 8 or 16. [default: 16]"),
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
):
    """Train a model; writes config.toml, checkpoints/, history.csv into the run directory."""
    from segdeploy.config import Config, apply_overrides, load_config
    from segdeploy.train import train as train_run

    cfg = load_config(config) if config else Config()
    cfg = apply_overrides(cfg, {
        "data.dataset": dataset, "data.root": data_root, "data.num_classes": num_classes, "data.size": size,
        "data.max_images": max_images, "data.augment": augment,
        "model.name": model, "model.encoder": encoder, "model.encoder_weights": encoder_weights,
        "model.output_stride": output_stride,
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
    backend: str = typer.Option("torch", help="torch or onnxruntime."),
    precision: str = typer.Option("fp32", help="Graph precision for exported backends."),
    split: str = typer.Option("val", help="train or val."),
    device: str = typer.Option("cpu", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(8, "--batch-size"),
    threads: Optional[int] = typer.Option(None, help="CPU threads."),
):
    """Evaluate a run: pixel accuracy, mIoU, mean Dice, per-class metrics -> RUN/metrics.json."""
    from segdeploy.evaluate import evaluate
    from segdeploy.rundir import RunDir

    run = RunDir.open(run_dir)
    result = evaluate(run, backend, precision, split, device=_resolve_device(device),
                      batch_size=batch_size, threads=threads)
    table = Table(title=f"{run.path} on {result['dataset']}/{split} ({backend}/{precision})")
    for column in ("class", "IoU %", "Dice %", "Acc %"):
        table.add_column(column, justify="right" if column != "class" else "left")
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    for cls, values in result["per_class"].items():
        table.add_row(cls, pct(values["iou"]), pct(values["dice"]), pct(values["accuracy"]))
    table.add_row("[bold]mean", pct(result["miou"]), pct(result["mean_dice"]), f"pixel {pct(result['pixel_accuracy'])}")
    console.print(table)
    console.print(f"wrote {run.metrics}")


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
    from segdeploy.config import parse_list
    from segdeploy.export import export_run
    from segdeploy.rundir import RunDir

    run = RunDir.open(run_dir)
    precisions = parse_list(precision) or run.load_config().export.precisions
    if trt:  # fail before minutes of export and calibration if TensorRT is missing
        from segdeploy.trt import import_tensorrt

        import_tensorrt()
    export_run(run, opset=opset, exporter=exporter, precisions=precisions, simplify=simplify,
               calib_images=calib_images, calib_method=calib_method, io_fp16=io_fp16,
               int8_activations=int8_activations)
    for path in [run.onnx_path(p) for p in dict.fromkeys(["fp32", *precisions])]:
        console.print(f"[green]exported[/] {path} (+ {path.with_suffix('.json').name})")
    if trt:
        from segdeploy.trt import BuildOptions, build_engines

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

    from segdeploy.config import parse_list
    from segdeploy.parity import DEFAULT_TOLERANCES, run_parity
    from segdeploy.rundir import RunDir

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
    console.print(f"wrote {RunDir(run_dir).parity}")
    if not all(r["passed"] for r in report["results"]):
        raise typer.Exit(1)


@app.command()
@handle_errors
def bench(
    run_dir: Path = RunArg,
    backends: str = typer.Option("torch,onnxruntime", help="Comma-separated backends."),
    batch_sizes: str = typer.Option("1,8", "--batch-sizes", help="Comma-separated batch sizes."),
    precision: str = typer.Option("fp32", help="Graph precision."),
    warmup: int = typer.Option(10, help="Untimed iterations first."),
    iters: int = typer.Option(50, help="Timed iterations per cell."),
    device: str = typer.Option("cpu", help="auto, cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch and onnxruntime [default: torch's]."),
):
    """Latency (p50/p90/p99), throughput and peak memory per backend and batch size -> RUN/bench.json."""
    from segdeploy.bench import run_bench
    from segdeploy.config import parse_list
    from segdeploy.rundir import RunDir

    report = run_bench(RunDir.open(run_dir), parse_list(backends), parse_list(batch_sizes, int), precision,
                       warmup=warmup, iters=iters, device=_resolve_device(device), threads=threads)
    table = Table(title=f"bench ({report['environment']['cpu']}, {report['environment']['torch_threads']} threads)")
    for column in ("backend", "precision", "device", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "peak MB", "memory"):
        table.add_column(column, justify="right")
    for r in report["results"]:
        lat = r["latency_ms"]
        table.add_row(r["backend"], r["precision"], r["device"], str(r["batch_size"]), f"{lat['p50']:.2f}",
                      f"{lat['p90']:.2f}", f"{lat['p99']:.2f}", f"{r['throughput_ips']:.1f}",
                      f"{r['peak_memory_mb']:.0f}", r["memory_kind"])
    console.print(table)
    console.print(f"wrote {RunDir(run_dir).bench}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
