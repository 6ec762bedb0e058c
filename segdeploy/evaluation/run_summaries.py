"""The numbers `segdeploy report` shows, read from run directories (per run, over seeds, across datasets).

Plain functions that other commands can reuse: `load_run_summary(run)` -> one dict per run,
`aggregate_seeds(rows)` -> mean/std over runs that differ only by seed, `cross_dataset_rows(summary)`
-> in-domain vs cross-domain drops, `render_markdown(...)`.
"""

from __future__ import annotations

import json
from pathlib import Path

from segdeploy.core.config import config_to_dict
from segdeploy.core.errors import StageMissingError
from segdeploy.core.rundir import RunDir
from segdeploy.evaluation.stats import mean_std

# (key, column title, kind): kind "rate" prints as %, "px" as pixels, others as given.
METRICS = [("pixel_accuracy", "Pixel acc %", "rate"), ("miou", "mIoU %", "rate"),
           ("mean_dice", "mean Dice %", "rate"), ("hd95", "HD95 px", "px")]
COST = [("seconds_per_epoch", "s / epoch", "seconds"), ("peak_memory_mb", "peak mem MB", "mb"),
        ("parameters", "params M", "params")]
LOWER_IS_BETTER = {"hd95"}


# --------------------------------------------------------------------------- loading


def _metrics_row(metrics: dict) -> dict:
    return {key: metrics.get(key) for key, _, _ in METRICS}


def load_evaluations(run: RunDir) -> list[dict]:
    """Every RUN/eval/*/metrics.json, in name order, with figure paths made absolute."""
    rows = []
    for path in sorted((run.path / "eval").glob("*/metrics.json")):
        metrics = run.read_json(path)
        rows.append({
            "label": path.parent.name, "backend": metrics.get("backend"), "precision": metrics.get("precision"),
            "dataset": metrics.get("dataset"), "data_root": metrics.get("data_root"), "split": metrics.get("split"),
            "images": metrics.get("images"), "in_domain": metrics.get("in_domain", True),
            "dataset_label": _dataset_label(metrics),
            "default_result": metrics.get("default_result", False),
            **_metrics_row(metrics),
            "hd95_undefined_pairs": metrics.get("hd95_undefined_pairs"),
            "per_class": metrics.get("per_class", {}),
            "figures": {name: str(run.path / rel) for name, rel in metrics.get("figures", {}).items()},
        })
    # the default result first, then other in-domain evaluations (torch first), then cross-domain ones
    rows.sort(key=lambda e: (not e["default_result"], not e["in_domain"], e["backend"] != "torch", e["label"]))
    return rows


def _dataset_label(metrics: dict) -> str:
    name = metrics.get("dataset") or "?"
    if metrics.get("in_domain", True) is False and metrics.get("data_root"):
        name += f" ({Path(metrics['data_root']).name})"
    return name


def load_run_summary(run: str | Path | RunDir) -> dict:
    """Everything the report shows about one run: config, in-domain metrics (RUN/metrics.json),
    training cost (history.csv), parameters, and every evaluation under RUN/eval/."""
    from segdeploy.models.checkpoint import checkpoint_parameters

    run = run if isinstance(run, RunDir) else RunDir.open(run)
    cfg = run.load_config()
    metrics = run.read_metrics()
    if metrics is None:
        raise StageMissingError(f"{run.metrics} not found: run `segdeploy eval {run.path}` first")
    if run.checkpoint_changed(metrics):
        raise StageMissingError(f"{run.metrics} was computed with another checkpoints/best.pt (trained again "
                                f"since): run `segdeploy eval {run.path}` again")
    cost = run.training_cost()
    config = config_to_dict(cfg)
    # runs that differ only by seed: the sections that decide what is trained, seed left out
    group = {section: dict(config[section]) for section in ("model", "data", "train")}
    group["train"].pop("seed", None)
    evaluations = load_evaluations(run)
    default = next((e for e in evaluations if e["default_result"]), None)
    return {
        "run": str(run.path), "name": run.path.name or cfg.name,
        "model": cfg.model.name, "encoder": cfg.model.encoder, "loss": cfg.train.loss, "seed": cfg.train.seed,
        "dataset": cfg.data.dataset, "size": cfg.data.size, "epochs": cost["epochs"],
        "eval_dataset": metrics.get("dataset"), "eval_split": metrics.get("split"), "images": metrics.get("images"),
        "backend": metrics.get("backend"), "precision": metrics.get("precision"),
        **_metrics_row(metrics),
        "hd95_undefined_pairs": metrics.get("hd95_undefined_pairs"),
        "seconds_per_epoch": cost["seconds_per_epoch"], "peak_memory_mb": cost["peak_memory_mb"],
        "parameters": checkpoint_parameters(run),
        "per_class": metrics.get("per_class", {}),
        "figures": default["figures"] if default else {},
        "evaluations": evaluations,
        "group_key": json.dumps(group, sort_keys=True, default=str),
    }


# --------------------------------------------------------------------------- arithmetic


def aggregate_seeds(rows: list[dict]) -> list[dict]:
    """Groups of runs whose configs differ only by seed (and name): mean +- std of every metric.

    Returns one dict per group with two or more runs, in order of first appearance:
    {"name", "runs", "seeds", "n", "model", "encoder", "loss", "<metric>": {"mean", "std", "n"}}."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group_key"], []).append(row)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        first = members[0]
        entry = {"name": _common_name([m["name"] for m in members]), "runs": [m["run"] for m in members],
                 "seeds": [m["seed"] for m in members], "n": len(members),
                 "model": first["model"], "encoder": first["encoder"], "loss": first["loss"]}
        for key, _, _ in METRICS + COST:
            entry[key] = mean_std([m.get(key) for m in members])
        out.append(entry)
    return out


def _common_name(names: list[str]) -> str:
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    prefix = prefix.rstrip("-_ .")
    return f"{prefix or names[0]} ({len(names)} seeds)"


def metric_drop(in_domain: float | None, cross: float | None, lower_is_better: bool = False
                ) -> tuple[float | None, float | None]:
    """(absolute, relative) drop from in-domain to cross-domain; positive means worse.

    Rates: in - cross (relative to in). HD95 (lower is better): cross - in (relative to in).
    The relative drop is None when the in-domain value is 0 or either value is missing."""
    if in_domain is None or cross is None:
        return None, None
    absolute = (cross - in_domain) if lower_is_better else (in_domain - cross)
    relative = absolute / in_domain if in_domain else None
    return absolute, relative


def cross_dataset_rows(summary: dict) -> list[dict]:
    """One row per (cross-domain evaluation, metric) of a run, against the in-domain evaluation with
    the same backend and precision (RUN/metrics.json when there is none)."""
    evaluations = summary["evaluations"]
    rows = []
    for cross in (e for e in evaluations if not e["in_domain"]):
        reference = next((e for e in evaluations if e["in_domain"] and e["split"] == "val"
                          and e["backend"] == cross["backend"] and e["precision"] == cross["precision"]),
                         None) or summary
        for key, title, kind in METRICS:
            absolute, relative = metric_drop(reference.get(key), cross.get(key), key in LOWER_IS_BETTER)
            rows.append({"run": summary["name"], "train_dataset": summary["dataset"],
                         "eval_dataset": cross["dataset_label"], "eval_label": cross["label"],
                         "backend": cross["backend"], "precision": cross["precision"], "metric": key,
                         "kind": kind, "in_domain": reference.get(key), "cross_domain": cross.get(key),
                         "absolute_drop": absolute, "relative_drop": relative})
    return rows
