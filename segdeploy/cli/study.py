"""`segdeploy study`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from segdeploy.cli.common import as_list, handle_errors
from segdeploy.core.progress import console


@handle_errors
def study(
    study_file: Path = typer.Argument(..., help="Study TOML (see studies/*.toml).", show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the file and show the plan; run nothing."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Study folder [default: <file's folder>/<study name>]."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated run or configuration names to run."),
    summary_only: bool = typer.Option(False, "--summary-only", help="Only rewrite summary.md/csv (and seed_tables.md) from the runs on disk."),
):
    """Run a grid of trainings (+ eval, export, parity, bench) from one file; rerun to resume."""
    from segdeploy.study.plan import load_study, plan_settings, readiness_warnings
    from segdeploy.study.run import plan_rows, run_study, write_summaries

    from segdeploy.core.validate import check_path

    plan = load_study(study_file, output and check_path(output, "folder", "--output", must_exist=False))
    table = Table(title=f"study {plan.name}: {len(plan.runs)} runs -> {plan.output}")
    for column in ("run", "settings", "baseline", "state", "to do"):
        table.add_column(column)
    common, own = plan_settings(plan)
    for row, settings in zip(plan_rows(plan), own):
        table.add_row(row["run"], " ".join(f"{k}={v}" for k, v in settings.items() if v != "-"), row["baseline"] or "",
                      row["state"], ", ".join(row["missing"]))
    console.print(table)
    console.print("every run: " + ", ".join(f"{k} {v}" for k, v in common.items() if v != "-"))
    for warning in readiness_warnings(plan):
        console.print(f"[yellow]note[/]: {warning}")
    if dry_run:
        console.print(f"[green]valid[/]: {study_file} ({len(plan.runs)} runs)")
        return
    path = write_summaries(plan) if summary_only else run_study(plan, as_list(only))
    extra = ", seed_tables.md" if plan.layout else ""
    console.print(f"[green]done[/]: {path} (+ summary.csv{extra})")
