"""`segdeploy report`: one markdown report (plus report.json and figures) over one or more runs.

Plain functions that other commands can reuse: `load_run_summary(run)` -> one dict per run,
`aggregate_seeds(rows)` -> mean/std over runs that differ only by seed, `cross_dataset_rows(summary)`
-> in-domain vs cross-domain drops, `render_markdown(...)`.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from segdeploy.core import fileio
from segdeploy.core.config import config_to_dict
from segdeploy.core.errors import SegdeployError, StageMissingError
from segdeploy.core.rundir import RunDir

# (key, column title, kind): kind "rate" prints as %, "px" as pixels, others as given.
METRICS = [("pixel_accuracy", "Pixel acc %", "rate"), ("miou", "mIoU %", "rate"),
           ("mean_dice", "mean Dice %", "rate"), ("hd95", "HD95 px", "px")]
COST = [("seconds_per_epoch", "s / epoch", "seconds"), ("peak_memory_mb", "peak mem MB", "mb"),
        ("parameters", "params M", "params")]
LOWER_IS_BETTER = {"hd95"}
SEED_INDEPENDENT = ("name",)


# --------------------------------------------------------------------------- loading


def _read_history(path: Path) -> tuple[float | None, float | None, int]:
    """(mean seconds per epoch, peak GPU memory MB or None, epochs) from history.csv."""
    if not path.is_file():
        return None, None, 0
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    seconds = [float(r["seconds"]) for r in rows if r.get("seconds")]
    peaks = [float(r["peak_gpu_memory_mb"]) for r in rows if r.get("peak_gpu_memory_mb")]
    return (float(np.mean(seconds)) if seconds else None), (max(peaks) if peaks else None), len(rows)


def count_model_parameters(cfg) -> int | None:
    """Parameters of the run's model, built without weights (nothing is downloaded or loaded)."""
    from segdeploy.models.registry import build_model, count_parameters

    if not cfg.model.num_classes:
        return None
    model_cfg = type(cfg.model)(**vars(cfg.model))
    model_cfg.encoder_weights = "none"
    try:
        return count_parameters(build_model(model_cfg, cfg.model.num_classes, cfg.data.size))
    except (SegdeployError, ImportError, RuntimeError, OSError):  # e.g. an optional model library missing
        return None


def _metrics_row(metrics: dict) -> dict:
    return {key: metrics.get(key) for key, _, _ in METRICS}


def load_evaluations(run: RunDir) -> list[dict]:
    """Every RUN/eval/*/metrics.json, in name order, with figure paths made absolute."""
    rows = []
    for path in sorted((run.path / "eval").glob("*/metrics.json")):
        try:
            metrics = fileio.read_json(path)
        except (OSError, json.JSONDecodeError) as exc:
            raise SegdeployError(f"cannot read {path}: {exc}") from None
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
    run = run if isinstance(run, RunDir) else RunDir.open(run)
    cfg = run.load_config()
    if not run.metrics.is_file():
        raise StageMissingError(f"{run.metrics} not found: run `segdeploy eval {run.path}` first")
    metrics = fileio.read_json(run.metrics)
    seconds, peak, epochs = _read_history(run.history)
    config = config_to_dict(cfg)
    group = {section: dict(values) for section, values in config.items() if isinstance(values, dict)}
    group["train"].pop("seed", None)
    evaluations = load_evaluations(run)
    default = next((e for e in evaluations if e["default_result"]), None)
    return {
        "run": str(run.path), "name": run.path.name or cfg.name,
        "model": cfg.model.name, "encoder": cfg.model.encoder, "loss": cfg.train.loss, "seed": cfg.train.seed,
        "dataset": cfg.data.dataset, "size": cfg.data.size, "epochs": epochs,
        "eval_dataset": metrics.get("dataset"), "eval_split": metrics.get("split"), "images": metrics.get("images"),
        "backend": metrics.get("backend"), "precision": metrics.get("precision"),
        **_metrics_row(metrics),
        "hd95_undefined_pairs": metrics.get("hd95_undefined_pairs"),
        "seconds_per_epoch": seconds, "peak_memory_mb": peak, "parameters": count_model_parameters(cfg),
        "per_class": metrics.get("per_class", {}),
        "figures": default["figures"] if default else {},
        "evaluations": evaluations,
        "group_key": json.dumps(group, sort_keys=True, default=str),
    }


# --------------------------------------------------------------------------- arithmetic


def mean_std(values: list[float | None]) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of the non-missing values."""
    present = np.array([v for v in values if v is not None], np.float64)
    if present.size == 0:
        return {"mean": None, "std": None, "n": 0}
    std = float(present.std(ddof=1)) if present.size > 1 else 0.0
    return {"mean": float(present.mean()), "std": std, "n": int(present.size)}


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


# --------------------------------------------------------------------------- formatting


def fmt(value, kind: str) -> str:
    """Numbers as the studies print them: rates in %, HD95 in pixels, two decimals."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if kind == "rate":
        return f"{100 * value:.2f}"
    if kind == "params":
        return f"{value / 1e6:.2f}"
    if kind == "mb":
        return f"{value:.0f}"
    return f"{value:.2f}"


def fmt_mean_std(stats: dict, kind: str) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{fmt(stats['mean'], kind)} ± {fmt(stats['std'], kind)}"


def _table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def render_markdown(summaries: list[dict], seed_groups: list[dict], figure_links: dict[str, dict[str, dict[str, str]]],
                    comparison_figure: str | None) -> str:
    lines = ["# segdeploy report", ""]
    lines += ["Rates (pixel accuracy, IoU, Dice) in %, HD95 in pixels at the evaluation input size, "
              "two decimals. Metrics: in-domain evaluation of each run (RUN/metrics.json: torch fp32, "
              "validation split). HD95: mean over (image, class) pairs where the class is in both truth "
              "and prediction; pairs where it is in only one are counted as undefined. s / epoch: mean "
              "training time per epoch (history.csv); peak mem: training peak GPU memory ('-': trained "
              "on CPU, not measured).", ""]
    lines += ["## Runs", ""]
    header = ["run", "model", "encoder", "loss", "seed"] + [t for _, t, _ in METRICS] + [t for _, t, _ in COST]
    rows = [[s["name"], s["model"], s["encoder"], s["loss"], str(s["seed"])]
            + [fmt(s[k], kind) for k, _, kind in METRICS] + [fmt(s[k], kind) for k, _, kind in COST]
            for s in summaries]
    lines += _table(header, rows, ["l"] * 5 + ["r"] * (len(header) - 5)) + [""]
    details = [f"- **{s['name']}**: `{s['run']}`, trained on {s['dataset']} at {s['size']} px for {s['epochs']} "
               f"epoch(s); evaluated on {s['eval_dataset']}/{s['eval_split']} ({s['images']} images); "
               f"HD95 undefined pairs: {s['hd95_undefined_pairs'] if s['hd95_undefined_pairs'] is not None else '-'}"
               for s in summaries]
    lines += details + [""]
    if comparison_figure:
        lines += [f"![comparison]({comparison_figure})", ""]

    if seed_groups:
        lines += ["## Mean ± std over seeds", "",
                  "Runs whose configurations differ only by seed; std is the sample standard deviation.", ""]
        header = ["runs", "model", "encoder", "loss", "seeds"] + [t for _, t, _ in METRICS] + [t for _, t, _ in COST]
        rows = [[g["name"], g["model"], g["encoder"], g["loss"], ", ".join(map(str, g["seeds"]))]
                + [fmt_mean_std(g[k], kind) for k, _, kind in METRICS + COST] for g in seed_groups]
        lines += _table(header, rows, ["l"] * 5 + ["r"] * (len(header) - 5)) + [""]

    backend_rows = []
    for s in summaries:
        torch_miou = next((e["miou"] for e in s["evaluations"] if e["in_domain"] and e["backend"] == "torch"
                           and e["precision"] == "fp32" and e["split"] == s["eval_split"]), s["miou"])
        for e in s["evaluations"]:
            if e["in_domain"]:
                delta = None if e["miou"] is None or torch_miou is None else e["miou"] - torch_miou
                backend_rows.append([s["name"], e["backend"], e["precision"], f"{e['split']} ({e['images']})"]
                                    + [fmt(e[k], kind) for k, _, kind in METRICS]
                                    + ["-" if delta is None else f"{100 * delta:+.2f}"])
    if backend_rows:
        lines += ["## Backends (in-domain)", "",
                  "The same model through each runner (same preprocessing); ΔmIoU in points against torch fp32.", ""]
        header = ["run", "backend", "precision", "split (images)"] + [t for _, t, _ in METRICS] + ["ΔmIoU pt"]
        lines += _table(header, backend_rows, ["l"] * 4 + ["r"] * (len(header) - 4)) + [""]

    cross = [row for s in summaries for row in cross_dataset_rows(s)]
    if cross:
        lines += ["## Cross-dataset", "",
                  "In-domain vs cross-domain for the same backend. Drops are positive when the cross-domain "
                  "result is worse: points (pt) for rates, pixels for HD95 (its increase); relative drop in % of "
                  "the in-domain value.", ""]
        header = ["run", "trained on", "evaluated on", "backend", "metric", "in-domain", "cross-domain",
                  "absolute drop", "relative drop %"]
        titles = {k: t for k, t, _ in METRICS}
        rows = [[r["run"], r["train_dataset"], r["eval_dataset"], f"{r['backend']}/{r['precision']}",
                 titles[r["metric"]], fmt(r["in_domain"], r["kind"]), fmt(r["cross_domain"], r["kind"]),
                 fmt(r["absolute_drop"], r["kind"]),
                 "-" if r["relative_drop"] is None else f"{100 * r['relative_drop']:.2f}"] for r in cross]
        lines += _table(header, rows, ["l"] * 5 + ["r"] * 4) + [""]

    lines += ["## Per class", ""]
    for s in summaries:
        lines += [f"### {s['name']}", ""]
        rows = [[cls, fmt(v.get("iou"), "rate"), fmt(v.get("dice"), "rate"), fmt(v.get("accuracy"), "rate"),
                 fmt(v.get("hd95"), "px"),
                 "-" if v.get("hd95_undefined_pairs") is None else str(v["hd95_undefined_pairs"])]
                for cls, v in s["per_class"].items()]
        lines += _table(["class", "IoU %", "Dice %", "Acc %", "HD95 px", "HD95 undefined"], rows) + [""]

    if figure_links:
        lines += ["## Figures", ""]
        for s in summaries:
            for label, links in figure_links.get(s["name"], {}).items():
                lines += [f"### {s['name']}: {label}", ""]
                for name, link in links.items():
                    lines += [f"**{name.replace('_', ' ')}**", "", f"![{s['name']} {label} {name}]({link})", ""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- the command


def _unique_names(summaries: list[dict]) -> None:
    seen: dict[str, int] = {}
    for s in summaries:
        count = seen.get(s["name"], 0)
        seen[s["name"]] = count + 1
        if count:
            s["name"] = f"{s['name']}#{count + 1}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def copy_figures(summaries: list[dict], output: Path) -> dict[str, dict[str, dict[str, str]]]:
    """Copy each evaluation's PNGs to OUTPUT/figures/<run>/<evaluation>/; links relative to OUTPUT."""
    links: dict[str, dict[str, dict[str, str]]] = {}
    for s in summaries:
        for e in s["evaluations"]:
            for name, source in e["figures"].items():
                source = Path(source)
                if not source.is_file():
                    continue
                target = output / "figures" / _slug(s["name"]) / _slug(e["label"]) / source.name
                fileio.write_bytes(target, source.read_bytes())
                links.setdefault(s["name"], {}).setdefault(e["label"], {})[name] = str(target.relative_to(output))
    return links


def write_report(runs: list[str | Path], output: str | Path) -> Path:
    """Write OUTPUT/report.md, OUTPUT/report.json and OUTPUT/figures/; returns the report.md path."""
    if not runs:
        raise SegdeployError("no runs given: segdeploy report RUN [RUN ...] --output DIR")
    output = Path(output)
    summaries = [load_run_summary(r) for r in runs]
    _unique_names(summaries)
    if (output / "figures").is_dir() and (output / "report.json").is_file():  # an earlier report: replace it
        shutil.rmtree(output / "figures")
    links = copy_figures(summaries, output)
    comparison = None
    if len(summaries) > 1:
        from segdeploy.evaluation.figures import plot_bars

        series = {title: [None if s[k] is None else 100 * s[k] for s in summaries]
                  for k, title, kind in METRICS if kind == "rate"}
        plot_bars([s["name"] for s in summaries], series, output / "figures" / "comparison.png",
                  title="in-domain metrics per run (%)")
        comparison = "figures/comparison.png"
    seed_groups = aggregate_seeds(summaries)
    markdown = render_markdown(summaries, seed_groups, links, comparison)
    fileio.write_text(output / "report.md", markdown)
    fileio.write_json(output / "report.json", {
        "runs": [{k: v for k, v in s.items() if k != "group_key"} for s in summaries],
        "seed_groups": seed_groups,
        "cross_dataset": [row for s in summaries for row in cross_dataset_rows(s)],
    })
    return output / "report.md"
