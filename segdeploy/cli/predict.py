"""`segdeploy predict`: class-index masks of a user's images, folders, lists, globs or videos."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from segdeploy.cli.common import DEFAULTS, RunArg, handle_errors, open_with
from segdeploy.core.errors import EXIT_CHECK_FAILED
from segdeploy.core.progress import console

P = DEFAULTS.predict


@handle_errors
def predict(
    run_dir: Path = RunArg,
    source: str = typer.Argument(..., help="An image, a folder (recursive), a glob pattern (quoted), a .txt file listing paths, or a video.", show_default=False),
    backend: Optional[str] = typer.Option(None, help="Runtime variant (grammar as in `bench --help`). [default: the one `segdeploy deploy` chose, else torch]"),
    precision: Optional[str] = typer.Option(None, help="Graph precision for exported backends. [default: the deployed one, else fp32]"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for the masks. [default: RUN/predict/<source name>/]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=f"[default: {P.batch_size}]"),
    overlay: Optional[bool] = typer.Option(None, "--overlay/--no-overlay", help="Also write <name>.overlay.jpg: the mask blended over the image. [default: off]"),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite/--no-overwrite", help="Redo images whose mask exists (default: keep them, so an interrupted run continues)."),
    device: Optional[str] = typer.Option(None, help=f"auto, cpu or cuda. [default: {P.device}]"),
    threads: Optional[int] = typer.Option(None, help="CPU threads of the runtime."),
    workers: Optional[int] = typer.Option(None, help=f"Threads decoding images, and as many encoding masks. [default: {P.workers}]"),
    max_megapixels: Optional[float] = typer.Option(None, "--max-megapixels", help="Skip (with a message) images larger than this; raise it for gigapixel images (no tiling). [default: the run's data.max_megapixels, 150]"),
):
    """Predict masks -> OUTPUT/<name>.png (class index per pixel, at the image's original size; the run's
    palette when it has a class map) and OUTPUT/predictions.json; exit 1 if any file was skipped."""
    from segdeploy.core.validate import check_path
    from segdeploy.deploy.predict import predict as run_predict

    run, cfg = open_with(run_dir, "predict", backend=backend, precision=precision, batch_size=batch_size,
                          overlay=overlay, overwrite=overwrite, device=device, threads=threads, workers=workers,
                          max_megapixels=max_megapixels)
    if output is not None:
        output = check_path(output, "folder", "--output", must_exist=False)
    outcome = run_predict(run, source, cfg.predict, output)
    rate = outcome.images_per_second
    console.print(f"{outcome.written} masks written ({outcome.variant}"
                  + (f", {rate:.1f} images/s" if rate else "") + ")"
                  + (f", {outcome.kept} kept from an earlier run (--overwrite redoes them)" if outcome.kept else "")
                  + f" -> {outcome.output}", highlight=False)
    if outcome.skipped:
        console.print(f"{len(outcome.skipped)} file(s) skipped (listed above and in predictions.json)",
                      highlight=False)
        raise typer.Exit(EXIT_CHECK_FAILED)
