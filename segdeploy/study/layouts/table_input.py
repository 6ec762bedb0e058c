"""What the seed table layouts render from: every configuration of a study with its in-domain, cross-dataset
and per-class numbers (mean over its runs), read from the run directories, and the markdown helpers the
layouts share. Configurations that have not trained yet are kept (their cells read "–"), so a layout shows
a study's whole grid next to the published numbers from the first run on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from segdeploy.evaluation.stats import format_mean_std, mean_std
from segdeploy.study.grid import PlannedRun, Study
from segdeploy.study.layouts.published import Published
from segdeploy.study.summary import add_deltas, aggregate, collect_run

IN_DOMAIN_KEYS = ("pixel_accuracy", "miou", "mean_dice", "hd95", "epoch_seconds", "peak_train_memory_mb")
CROSS_KEYS = ("miou", "mean_dice", "pixel_accuracy")
NO_VALUE = "–"


@dataclass(frozen=True)
class Metric:
    key: str  # a key of metrics.json (rates as fractions) or of the summary's rows
    header: str
    scale: float = 1.0  # 100 for a table in %
    digits: int = 4


@dataclass
class TableInput:
    study: Study
    configs: list[dict[str, Any]]  # summary.aggregate entries with deltas, in the study's order
    runs: dict[str, list[PlannedRun]]  # configuration -> its planned runs
    published: Published | None

    def config(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.configs if c["config"] == name), None)

    def cross(self, config: str, target: str) -> dict[str, dict]:
        """metric -> mean_std over the configuration's runs evaluated on the dataset `target`."""
        found: dict[str, list] = {key: [] for key in CROSS_KEYS}
        for planned in self.runs.get(config, []):
            run = self.study.run_dir(planned)
            metrics = run.read_json(run.cross_metrics(target)) or {}
            for key in CROSS_KEYS:
                found[key].append(metrics.get(key))
        return {key: mean_std(values) for key, values in found.items()}

    def per_class(self, config: str) -> tuple[list[str], dict[str, dict[str, dict]]]:
        """(class names in index order, name -> {"iou": mean_std, "dice": mean_std}) from metrics.json."""
        names: list[str] = []
        values: dict[str, dict[str, list]] = {}
        for planned in self.runs.get(config, []):
            metrics = self.study.run_dir(planned).read_metrics() or {}
            names = names or list(metrics.get("class_names") or metrics.get("per_class", {}))
            for name, per in (metrics.get("per_class") or {}).items():
                for key in ("iou", "dice"):
                    values.setdefault(name, {"iou": [], "dice": []})[key].append(per.get(key))
        return names, {name: {k: mean_std(v) for k, v in per.items()} for name, per in values.items()}


def collect_table_input(study: Study, published: Published | None) -> TableInput:
    runs: dict[str, list[PlannedRun]] = {}
    rows = []
    for planned in study.runs:
        runs.setdefault(planned.config_name, []).append(planned)
        if study.run_dir(planned).config_path.is_file():
            rows.append(collect_run(study, planned))
        else:  # not trained yet: its labels only, so the configuration still has its row
            rows.append({"run": planned.name, "config": planned.config_name, "baseline": planned.baseline,
                         **planned.labels})
    configs = add_deltas(aggregate(rows, list(IN_DOMAIN_KEYS)))
    for config in configs:
        config["trained"] = sum(1 for p in runs[config["config"]] if study.run_dir(p).config_path.is_file())
    return TableInput(study, configs, runs, published)


# --------------------------------------------------------------------------- markdown


def number(value: float | None, metric: Metric) -> str:
    return NO_VALUE if value is None else f"{value * metric.scale:.{metric.digits}f}"


def ours(stats: dict, metric: Metric) -> str:
    """Our value: the mean ± std over the configuration's runs (one run: 'value (n=1)')."""
    return format_mean_std(stats, lambda value: number(value, metric))


def theirs(row: dict | None, key: str, metric: Metric) -> str:
    """A published number as the seed printed it (already in the table's unit)."""
    value = None if row is None else row.get(key)
    return NO_VALUE if value is None else f"{value:.{metric.digits}f}"


def metric_cells(stats: dict[str, dict], published_row: dict | None, metrics: list[Metric],
                 with_published: bool) -> list[str]:
    cells = []
    for metric in metrics:
        cells.append(ours(stats.get(metric.key, mean_std([])), metric))
        if with_published:
            cells.append(theirs(published_row, metric.key, metric))
    return cells


def metric_headers(metrics: list[Metric], with_published: bool) -> list[str]:
    headers = []
    for metric in metrics:
        headers += [metric.header, f"{metric.header} published"] if with_published else [metric.header]
    return headers


def markdown_table(headers: list[str], rows: list[list[str]], text_columns: int) -> list[str]:
    """A markdown table; the first `text_columns` columns left-aligned, the numbers right-aligned."""
    align = ["---" if i < text_columns else "---:" for i in range(len(headers))]
    return ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(row) + " |" for row in rows), ""]
