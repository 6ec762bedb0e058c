"""`segdeploy report`: report.md (one function per section), report.json and the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdeploy.core import fileio, unit
from segdeploy.core.errors import ConfigError, SegdeployError
from segdeploy.core.names import safe_component
from segdeploy.core.size import size_label

from segdeploy.evaluation.run_summaries import COST, METRICS, aggregate_seeds, cross_dataset_rows, load_run_summary
from segdeploy.evaluation.speed_accuracy import LatencyChoice, plot_speed, speed_rows, speed_section
from segdeploy.evaluation.stats import format_mean_std

CURVES = "learning curves"  # the key of a run's curves among its figure links


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
    return format_mean_std(stats, lambda value: fmt(value, kind))


def _table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


INTRO = ("Rates (pixel accuracy, IoU, Dice) in %, HD95 in pixels at the evaluation input size, two decimals. "
         "Metrics: in-domain evaluation of each run (RUN/metrics.json: torch fp32, validation split). HD95: mean "
         "over (image, class) pairs where the class is in both truth and prediction; pairs where it is in only one "
         "are counted as undefined. s / epoch: mean training time per epoch (history.csv); peak mem: training peak "
         "GPU memory ('-': trained on CPU, not measured).")


def render_markdown(summaries: list[dict], seed_groups: list[dict], figure_links: dict[str, dict[str, dict[str, str]]],
                    comparison_figure: str | None, speed: dict | None = None) -> str:
    lines = ["# segdeploy report", "", INTRO, ""]
    lines += runs_section(summaries, comparison_figure) + seeds_section(seed_groups)
    lines += speed_section(speed, "figures/speed_accuracy.png") if speed else []
    lines += backends_section(summaries) + cross_section(summaries) + per_class_section(summaries)
    lines += curves_section(summaries, figure_links)
    lines += figures_section(summaries, figure_links)
    return "\n".join(lines).rstrip() + "\n"


def runs_section(summaries: list[dict], comparison_figure: str | None) -> list[str]:
    header = ["run", "model", "encoder", "loss", "seed"] + [t for _, t, _ in METRICS] + [t for _, t, _ in COST]
    rows = [[s["name"], s["model"], s["encoder"], s["loss"], str(s["seed"])]
            + [fmt(s[k], kind) for k, _, kind in METRICS] + [fmt(s[k], kind) for k, _, kind in COST]
            for s in summaries]
    lines = ["## Runs", ""] + _table(header, rows, ["l"] * 5 + ["r"] * (len(header) - 5)) + [""]
    lines += [f"- **{s['name']}**: `{s['run']}`, trained on {s['dataset']} at {size_label(s['size'])} px for {s['epochs']} "
              f"epoch(s); evaluated on {s['eval_dataset']}/{s['eval_split']} ({s['images']} images); "
              f"HD95 undefined pairs: {s['hd95_undefined_pairs'] if s['hd95_undefined_pairs'] is not None else '-'}"
              for s in summaries] + [""]
    return lines + ([f"![comparison]({comparison_figure})", ""] if comparison_figure else [])


def seeds_section(seed_groups: list[dict]) -> list[str]:
    if not seed_groups:
        return []
    header = ["runs", "model", "encoder", "loss", "seeds"] + [t for _, t, _ in METRICS] + [t for _, t, _ in COST]
    rows = [[g["name"], g["model"], g["encoder"], g["loss"], ", ".join(map(str, g["seeds"]))]
            + [fmt_mean_std(g[k], kind) for k, _, kind in METRICS + COST] for g in seed_groups]
    return (["## Mean ± std over seeds", "",
             "Runs whose configurations differ only by seed; std is the sample standard deviation.", ""]
            + _table(header, rows, ["l"] * 5 + ["r"] * (len(header) - 5)) + [""])


def backends_section(summaries: list[dict]) -> list[str]:
    rows = []
    for s in summaries:
        torch_miou = next((e["miou"] for e in s["evaluations"] if e["in_domain"] and e["backend"] == "torch"
                           and e["precision"] == "fp32" and e["split"] == s["eval_split"]), s["miou"])
        for e in (e for e in s["evaluations"] if e["in_domain"]):
            delta = None if e["miou"] is None or torch_miou is None else e["miou"] - torch_miou
            rows.append([s["name"], e["backend"], e["precision"], f"{e['split']} ({e['images']})"]
                        + [fmt(e[k], kind) for k, _, kind in METRICS] + ["-" if delta is None else f"{100 * delta:+.2f}"])
    if not rows:
        return []
    header = ["run", "backend", "precision", "split (images)"] + [t for _, t, _ in METRICS] + ["ΔmIoU pt"]
    return (["## Backends (in-domain)", "",
             "The same model through each runner (same preprocessing); ΔmIoU in points against torch fp32.", ""]
            + _table(header, rows, ["l"] * 4 + ["r"] * (len(header) - 4)) + [""])


def cross_section(summaries: list[dict]) -> list[str]:
    cross = [row for s in summaries for row in cross_dataset_rows(s)]
    if not cross:
        return []
    header = ["run", "trained on", "evaluated on", "backend", "metric", "in-domain", "cross-domain",
              "absolute drop", "relative drop %"]
    titles = {k: t for k, t, _ in METRICS}
    rows = [[r["run"], r["train_dataset"], r["eval_dataset"], f"{r['backend']}/{r['precision']}",
             titles[r["metric"]], fmt(r["in_domain"], r["kind"]), fmt(r["cross_domain"], r["kind"]),
             fmt(r["absolute_drop"], r["kind"]),
             "-" if r["relative_drop"] is None else f"{100 * r['relative_drop']:.2f}"] for r in cross]
    return (["## Cross-dataset", "",
             "In-domain vs cross-domain for the same backend. Drops are positive when the cross-domain result is "
             "worse: points (pt) for rates, pixels for HD95 (its increase); relative drop in % of the in-domain "
             "value.", ""] + _table(header, rows, ["l"] * 5 + ["r"] * 4) + [""])


def per_class_section(summaries: list[dict]) -> list[str]:
    lines = ["## Per class", ""]
    for s in summaries:
        rows = [[cls, fmt(v.get("iou"), "rate"), fmt(v.get("dice"), "rate"), fmt(v.get("accuracy"), "rate"),
                 fmt(v.get("hd95"), "px"),
                 "-" if v.get("hd95_undefined_pairs") is None else str(v["hd95_undefined_pairs"])]
                for cls, v in s["per_class"].items()]
        lines += [f"### {s['name']}", ""]
        lines += _table(["class", "IoU %", "Dice %", "Acc %", "HD95 px", "HD95 undefined"], rows) + [""]
    return lines


def curves_section(summaries: list[dict], figure_links: dict[str, dict[str, dict[str, str]]]) -> list[str]:
    runs = [s for s in summaries if CURVES in figure_links.get(s["name"], {})]
    if not runs:
        return []
    lines = ["## Learning curves", "", "Train and validation loss, validation mIoU and mean Dice per epoch "
             "(history.csv).", ""]
    for s in runs:
        lines += [f"![{s['name']} learning curves]({figure_links[s['name']][CURVES]['curves']})", ""]
    return lines


def figures_section(summaries: list[dict], figure_links: dict[str, dict[str, dict[str, str]]]) -> list[str]:
    if not any(label != CURVES for links in figure_links.values() for label in links):
        return []
    lines = ["## Figures", ""]
    for s in summaries:
        for label, links in figure_links.get(s["name"], {}).items():
            if label == CURVES:
                continue
            lines += [f"### {s['name']}: {label}", ""]
            for name, link in links.items():
                lines += [f"**{name.replace('_', ' ')}**", "", f"![{s['name']} {label} {name}]({link})", ""]
    return lines


# --------------------------------------------------------------------------- the command


def _unique_names(summaries: list[dict]) -> None:
    seen: dict[str, int] = {}
    for s in summaries:
        count = seen.get(s["name"], 0)
        seen[s["name"]] = count + 1
        if count:
            s["name"] = f"{s['name']}#{count + 1}"


def copy_figures(summaries: list[dict], figures: Path) -> dict[str, dict[str, dict[str, str]]]:
    """Copy each evaluation's PNGs to FIGURES/<run>/<evaluation>/ and draw each run's learning curves from
    its history.csv into FIGURES/<run>/curves.png; links relative to the report (OUTPUT/figures/...),
    whatever folder FIGURES is staged in."""
    from segdeploy.core.rundir import RunDir
    from segdeploy.training.curves import plot_learning_curves

    links: dict[str, dict[str, dict[str, str]]] = {}
    for s in summaries:
        history = RunDir(Path(s["run"])).read_history()
        if history:
            relative = Path(safe_component(s["name"])) / "curves.png"
            plot_learning_curves(history, figures / relative,
                                 title=f"{s['name']}: {s['model']}/{s['encoder']} on {s['dataset']}")
            links.setdefault(s["name"], {})[CURVES] = {"curves": str("figures" / relative)}
        for e in s["evaluations"]:
            for name, source in e["figures"].items():
                source = Path(source)
                if not source.is_file():
                    continue
                relative = Path(safe_component(s["name"])) / safe_component(e["label"]) / source.name
                fileio.write_bytes(figures / relative, source.read_bytes())
                links.setdefault(s["name"], {}).setdefault(e["label"], {})[name] = str("figures" / relative)
    return links


def write_report(runs: list[str | Path], output: str | Path, latency: LatencyChoice = LatencyChoice()) -> Path:
    """Write OUTPUT/report.md, OUTPUT/report.json and OUTPUT/figures/; returns the report.md path.
    `latency`: the bench.json row of each run that "Speed against accuracy" shows."""
    if not runs:
        raise SegdeployError("no runs given: segdeploy report RUN [RUN ...] --output DIR")
    seen: dict[Path, str | Path] = {}
    for given in runs:
        resolved = Path(given).expanduser().resolve()
        if resolved in seen:
            raise ConfigError(f"run {resolved} is given twice ({seen[resolved]} and {given}): each run counts once "
                              "(a second seed is another run directory)")
        seen[resolved] = given
    output, latency = Path(output), latency.checked()
    unit.recover(output)
    summaries = [load_run_summary(r) for r in runs]
    _unique_names(summaries)
    # report.md, report.json and figures/ are one unit: an interrupted report leaves the earlier one whole
    with unit.FileUnit(output) as files:
        figures = files.folder(output / "figures", replace=(output / "report.json").is_file())
        links = copy_figures(summaries, figures)
        comparison = None
        if len(summaries) > 1:
            from segdeploy.evaluation.figures import plot_bars

            series = {title: [None if s[k] is None else 100 * s[k] for s in summaries]
                      for k, title, kind in METRICS if kind == "rate"}
            plot_bars([s["name"] for s in summaries], series, figures / "comparison.png",
                      title="in-domain metrics per run (%)")
            comparison = "figures/comparison.png"
        seed_groups = aggregate_seeds(summaries)
        speed = speed_rows(summaries, latency)
        plot_speed(speed, figures / "speed_accuracy.png")
        files.write_text(output / "report.md", render_markdown(summaries, seed_groups, links, comparison, speed))
        files.write_json(output / "report.json", {
            "speed_accuracy": speed,
            "runs": [{k: v for k, v in s.items() if k != "group_key"} for s in summaries],
            "seed_groups": seed_groups,
            "cross_dataset": [row for s in summaries for row in cross_dataset_rows(s)],
        })
    return output / "report.md"
