"""`segdeploy deploy`: the fastest measured variant within an accuracy budget, as a bundle (+ Triton)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from segdeploy.cli.common import DEFAULTS, RunArg, handle_errors, open_with
from segdeploy.core.errors import EXIT_CHECK_FAILED
from segdeploy.core.progress import console


@handle_errors
def deploy(
    run_dir: Path = RunArg,
    objective: Optional[str] = typer.Option(None, help="latency (p50 of one call) or throughput (images/s). "
                                            f"[default: {DEFAULTS.deploy.objective}]"),
    batch: Optional[int] = typer.Option(None, "--batch", help="Rank this measured batch size only. [default: any]"),
    max_miou_drop: Optional[float] = typer.Option(None, "--max-miou-drop", help="mIoU points a variant may lose "
                                                  f"against torch fp32. [default: {DEFAULTS.deploy.max_miou_drop:g}]"),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Minimum argmax agreement with "
                                                  f"torch fp32 (fraction). [default: {DEFAULTS.deploy.min_agreement:g}]"),
    output: Optional[Path] = typer.Option(None, "--output", help="Bundle folder (replaced). [default: RUN/deploy]"),
    triton: bool = typer.Option(False, "--triton", help="Also write a Triton model repository (OUTPUT/triton/) "
                                "for the chosen variant."),
    triton_all: bool = typer.Option(False, "--triton-all", help="A Triton model for every variant within the budget."),
):
    """Pick the fastest variant that bench measured and parity checked within the accuracy budget, print
    every candidate and why each losing one lost, and write the bundle: graph, classes.json, manifest.json,
    README.md and a standalone predict.py (numpy, Pillow and the runtime only). Exit 1 when no variant is
    inside the budget (nothing written)."""
    from segdeploy.core.env import environment
    from segdeploy.deploy.bundle import write_bundle
    from segdeploy.deploy.measured import read_measurements
    from segdeploy.deploy.pick import check_objective, pick
    from segdeploy.deploy.readme import decision_table
    from segdeploy.deploy.targets import is_deployable

    run, cfg = open_with(run_dir, "deploy", objective=objective, batch=batch, max_miou_drop=max_miou_drop,
                          min_agreement=min_agreement)
    check_objective(cfg.deploy)  # a usage error before reading anything
    measurements = read_measurements(run, environment())
    decision = pick(measurements.bench, measurements.parity, cfg.deploy, is_deployable)
    console.print(decision_table(decision))
    if decision.chosen is None:
        console.print("no measured variant is inside the budget: nothing deployed (widen --max-miou-drop or "
                      "--min-agreement, or measure other variants)", highlight=False)
        raise typer.Exit(EXIT_CHECK_FAILED)
    target = output or run.deploy_dir
    manifest = write_bundle(run, decision, measurements, target, "all" if triton_all else "chosen" if triton else None)
    chosen = decision.chosen
    console.print(f"deployed {chosen.variant}/{chosen.precision} at batch {chosen.batch_size} -> {target} "
                  f"({len(manifest['files'])} files"
                  + (f", Triton models: {', '.join(t['name'] for t in manifest['triton'])}" if manifest.get("triton") else "")
                  + ")", highlight=False)
