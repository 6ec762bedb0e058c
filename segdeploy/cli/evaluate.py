"""`segdeploy eval` and `segdeploy report`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from segdeploy.cli.common import (DEFAULTS, DeviceOption, PluginOption, RunArg, as_list, backends_help, handle_errors,
                                  load_plugins, open_with, renamed)
from segdeploy.core.progress import console
from segdeploy.data.registry import DATASETS


@handle_errors
def eval_(
    run_dir: Path = RunArg,
    backends: Optional[str] = typer.Option(None, help=f"Comma-separated runtime variants, one evaluation each: {backends_help()}. "
                                           f"[default: {','.join(DEFAULTS.eval.backends)}]"),
    precision: Optional[str] = typer.Option(None, help="Comma-separated graph precisions for exported backends: fp32, fp16, int8. "
                                            f"[default: {','.join(DEFAULTS.eval.precisions)}]"),
    split: Optional[str] = typer.Option(None, help="train, val or all (their union). [default: val; all on another dataset]"),
    dataset: Optional[str] = typer.Option(None, help=f"Evaluate on another dataset (same classes): {DATASETS.known()} [default: the run's]."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Folder of that dataset [default: the run's]."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use at most this many images."),
    figures: Optional[bool] = typer.Option(None, "--figures/--no-figures", help="Write the PNG figures. [default: on]"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help=f"Images in best.png and worst.png. [default: {DEFAULTS.eval.top_k}]"),
    device: Optional[str] = DeviceOption,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=f"[default: {DEFAULTS.eval.batch_size}]"),
    threads: Optional[int] = typer.Option(None, help="CPU threads."),
    plugin: Optional[list[Path]] = PluginOption,
    backend: Optional[str] = typer.Option(None, "--backend", hidden=True, help="Deprecated: --backends."),
):
    """Evaluate a run: pixel accuracy, mIoU, mean Dice, HD95, per-class and per-image metrics, figures
    -> RUN/eval/<variant>-<precision>-<dataset>-<split>/ per variant (torch in-domain also -> RUN/metrics.json)."""
    from segdeploy.evaluation.evaluate import evaluate_all

    backends = renamed("--backends", backends, "--backend", backend)
    load_plugins(plugin)
    run, cfg = open_with(run_dir, "eval", backends=as_list(backends), precisions=as_list(precision), split=split,
                          dataset=dataset, data_root=data_root, max_images=max_images, figures=figures, top_k=top_k,
                          device=device, batch_size=batch_size, threads=threads)
    for result in evaluate_all(run, cfg.eval):
        _print_result(run, result)


def _print_result(run, result: dict) -> None:
    from segdeploy.evaluation.tables import eval_table

    console.print(eval_table(result, f"{run.path} on {result['dataset']}/{result['split']}, {result['images']} images "
                                     f"({result['backend']}/{result['precision']})"))
    if result["hd95_undefined_pairs"]:
        console.print(f"HD95 undefined for {result['hd95_undefined_pairs']} (image, class) pairs "
                      "(class in only one of truth and prediction); the mean is over the other "
                      f"{result['hd95_pairs']}")
    console.print(f"wrote {run.path / result['eval_dir'] / 'metrics.json'}"
                  + (f" and {run.metrics}" if result["default_result"] else ""))


@handle_errors
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (each evaluated with `segdeploy eval`).", show_default=False),
    output: Path = typer.Option(Path("report"), "--output", "-o", help="Folder for report.md, report.json and figures/."),
    latency_backend: Optional[str] = typer.Option(None, "--latency-backend", help="Runtime variant whose bench.json row gives each run's latency in 'Speed against accuracy'. [default: openvino where the runs have it, else the variant most runs have]"),
    latency_precision: str = typer.Option("fp32", "--latency-precision", help="Precision of that row."),
    latency_batch: int = typer.Option(1, "--latency-batch", help="Batch size of that row."),
):
    """Compare runs: main table, mean +- std over seeds, speed against accuracy (mIoU vs bench.json latency and
    training time), backends, cross-dataset drops, per-class tables, figures -> OUTPUT/report.md (+ report.json,
    figures/)."""
    from segdeploy.core.validate import check_path
    from segdeploy.evaluation.report_files import write_report
    from segdeploy.evaluation.speed_accuracy import LatencyChoice

    path = write_report(run_dirs, check_path(output, "folder", "--output", must_exist=False),
                        LatencyChoice(latency_backend, latency_precision, latency_batch))
    console.print(f"[green]wrote[/] {path} (+ report.json, figures/)")
