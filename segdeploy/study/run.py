"""Running a study: what is done is read from each run directory, so a rerun only does what is missing."""

from __future__ import annotations

from pathlib import Path

from segdeploy.core import fileio
from segdeploy.core.config import Config, config_from_dict, copy_config
from segdeploy.core.errors import ConfigError, SegdeployError
from segdeploy.core.progress import console
from segdeploy.core.rundir import RunDir
from segdeploy.study.grid import PlannedRun, Study, config_difference
from segdeploy.study.layouts import write_seed_tables
from segdeploy.study.summary import write_summary


def stage_status(study: Study, planned: PlannedRun) -> dict[str, bool]:
    """Which steps of this run are complete, judged only from the files in its run directory."""
    run = study.run_dir(planned)
    status = {"train": (run.checkpoint("last").is_file() and run.checkpoint("best").is_file()
                        and run.is_finished())}
    for stage in planned.stages:
        if stage == "eval":  # an evaluation of an earlier checkpoint is not this run's
            status["eval"] = run.metrics.is_file() and not run.checkpoint_changed(run.read_metrics() or {})
            for name in planned.cross_eval:
                status[f"cross:{name}"] = run.cross_metrics(name).is_file()
        elif stage == "export":
            status["export"] = run.onnx_path("fp32").is_file() and run.onnx_sidecar("fp32").is_file()
        elif stage == "parity":
            status["parity"] = run.parity.is_file()
        elif stage == "bench":
            status["bench"] = run.bench.is_file()
    return status


def check_same_config(run: RunDir, planned: PlannedRun) -> None:
    """A run directory made from another configuration is never silently reused, replaced or summarised."""
    difference = config_difference(run, planned)
    if difference:
        raise SegdeployError(f"{run.path} was trained with {difference}: delete that run directory or give "
                             "the run another name")


def train_or_continue(planned: PlannedRun, run: RunDir, started: bool) -> None:
    """Train a run; an unfinished one (`started`) continues from its last checkpoint, or starts again
    when it was killed before writing one."""
    from segdeploy.training.loop import train

    if started and run.checkpoint("last").is_file():
        train(planned.cfg, run.path, resume=True)
    else:
        train(planned.cfg, run.path, overwrite=started)


def _dataset_config(study: Study, name: str, size: int):
    preset = study.datasets.get(name)
    data = config_from_dict({"data": preset.data if preset else {"dataset": name}}).data
    data.size = size
    return data


def run_stages(study: Study, planned: PlannedRun, status: dict[str, bool]) -> None:
    run = study.run_dir(planned)
    cfg = copy_config(planned.cfg)
    cfg.eval.device = cfg.parity.device = study.device
    if "eval" in planned.stages:
        _eval_stage(study, planned, run, cfg, status)
    if "export" in planned.stages and not status.get("export"):
        from segdeploy.export.onnx import export_run

        console.print("  export")
        export_run(run, cfg.export)
    if "parity" in planned.stages and not status.get("parity"):
        from segdeploy.evaluation.parity import run_parity

        console.print(f"  parity ({', '.join(cfg.parity.backends)})")
        run_parity(run, _resolved(cfg.parity))
    if "bench" in planned.stages and not status.get("bench"):
        from segdeploy.bench.sweep import run_bench

        console.print(f"  bench ({', '.join(cfg.bench.backends)})")
        run_bench(run, _resolved(cfg.bench))


def _resolved(settings):
    from segdeploy.core.env import resolve_device

    settings.device = resolve_device(settings.device)
    return settings


def _eval_stage(study: Study, planned: PlannedRun, run: RunDir, cfg: Config, status: dict[str, bool]) -> None:
    from segdeploy.evaluation.evaluate import evaluate

    eval_cfg = _resolved(cfg.eval)
    for name in planned.cross_eval:
        if not status.get(f"cross:{name}"):
            console.print(f"  cross-dataset eval on {name}")
            # evaluate() writes RUN/metrics.json; keep a copy per dataset, the in-domain eval runs last
            result = evaluate(run, eval_cfg, data=_dataset_config(study, name, cfg.data.size))
            fileio.write_json(run.cross_metrics(name), {**result, "cross_dataset": name})
            status["eval"] = False
    if not status.get("eval"):
        console.print("  eval")
        evaluate(run, eval_cfg)


def plan_rows(study: Study) -> list[dict]:
    rows = []
    for planned in study.runs:
        status = stage_status(study, planned)
        started = study.run_dir(planned).config_path.is_file()
        state = "done" if all(status.values()) else ("partial" if started else "todo")
        missing = [k for k, v in status.items() if not v]
        if config_difference(study.run_dir(planned), planned):
            state, missing = "config differs", ["delete the run directory or rename the run"]
        rows.append({"run": planned.name, "config": planned.config_name, "state": state, "missing": missing,
                     "baseline": planned.baseline})
    return rows


def write_summaries(study: Study) -> Path:
    """summary.md/csv, and seed_tables.md when the study names a table layout; returns summary.md's path."""
    path = write_summary(study)
    write_seed_tables(study)
    return path


def run_study(study: Study, only: list[str] | None = None) -> Path:
    """Run every unfinished run and stage; write the summary after each run and on Ctrl-C."""
    selected = [p for p in study.runs if not only or p.name in only or p.config_name in only]
    if only and not selected:
        raise ConfigError(f"--only {', '.join(only)} matches no run (runs: {', '.join(p.name for p in study.runs)})")
    for planned in selected:  # finished runs too, and before any work: results belong to their own config
        check_same_config(study.run_dir(planned), planned)
    study.runs_dir.mkdir(parents=True, exist_ok=True)
    try:
        for number, planned in enumerate(selected, 1):
            run = study.run_dir(planned)
            status = stage_status(study, planned)
            if all(status.values()):
                console.print(f"[dim]study {study.name} [{number}/{len(selected)}] {planned.name}: done, skipped[/]")
                continue
            console.print(f"[bold]study {study.name} [{number}/{len(selected)}] {planned.name}[/]")
            if not status["train"]:
                started = run.config_path.is_file()
                train_or_continue(planned, run, started)
                status = stage_status(study, planned)
            run_stages(study, planned, status)
            write_summaries(study)
    except KeyboardInterrupt:
        write_summaries(study)
        raise
    except SegdeployError as exc:  # name the run; keep the error's class and exit code
        write_summaries(study)
        exc.args = (f"study {study.name}, run {planned.name}: {exc}",)
        raise
    return write_summaries(study)
