"""The second seed's table layout ("Image Segmentation Review: DeepLabV3 and U-Net"): Table 1 (baselines),
Tables 3/4 (ablations per model), Tables 5/6 (Train -> Test with drops), Table 7 (per-class differences
between two runs), and the compute cost its section 3.5 asks for. Rates are fractions, four decimals."""

from __future__ import annotations

from typing import Any

from segdeploy.evaluation.stats import mean_std
from segdeploy.study.layouts.table_input import (NO_VALUE, Metric, TableInput, markdown_table, metric_cells, metric_headers,
                                        number, ours, theirs)

METRICS = [Metric("miou", "mIoU"), Metric("mean_dice", "mDice"), Metric("pixel_accuracy", "mPA")]
PER_CLASS_MIN_IOU_DELTA = 0.05  # Table 7 lists the classes with |delta IoU| above this


def _find(data: TableInput, table: str, **match: Any) -> dict | None:
    return data.published.find(table, **match) if data.published is not None else None


def _is_baseline(config: dict) -> bool:
    return not config.get("baseline") or config["baseline"] == config["config"]


def variant(config: dict, base: dict | None) -> str:
    """How an ablation differs from its baseline, in the seed's words ("backbone=resnet101", "OS=16")."""
    if base is None or config is base:
        return "Baseline"
    texts = {"encoder": "backbone={}", "output_stride": "OS={}", "size": "input_size={}", "loss": "loss={}",
             "model": "model={}", "dataset": "dataset={}"}
    changes = []
    for key in ("model", "encoder", "output_stride", "encoder_weights", "size", "loss", "dataset"):
        value = config.get(key)
        if value == base.get(key):
            continue
        if key == "encoder_weights":
            changes.append("Random init encoder" if value == "none" else f"init={value}")
        else:
            changes.append(texts[key].format(value))
    return ", ".join(changes) or "other settings"


def _baselines(data: TableInput, with_published: bool) -> list[str]:
    rows = [[c["config"], str(c.get("model")), str(c.get("dataset")),
             *metric_cells(c["values"], _find(data, "baselines", run=c["config"]), METRICS, with_published)]
            for c in data.configs if _is_baseline(c)]
    return ["## Baseline results (seed Table 1)", "",
            *markdown_table(["run", "model", "dataset", *metric_headers(METRICS, with_published)], rows, 3)]


def _ablations(data: TableInput, with_published: bool) -> list[str]:
    lines: list[str] = []
    models = list(dict.fromkeys(c.get("model") for c in data.configs))
    for model in models:
        rows = []
        for base in (c for c in data.configs if c.get("model") == model):
            family = [base, *(c for c in data.configs if c.get("baseline") == base["config"] and c is not base)]
            if len(family) == 1:
                continue  # a configuration without ablations of its own is in Table 1 only, as in the seed
            for config in family:
                row = _find(data, "ablations", run=config["config"])
                rows.append([config["config"], str(config.get("dataset")), variant(config, base),
                             *metric_cells(config["values"], row, METRICS, with_published)])
        if rows:
            lines += [f"## Ablation and hyperparameter results for {model} (seed Tables 3 and 4)", "",
                      *markdown_table(["run", "dataset", "variant", *metric_headers(METRICS, with_published)], rows, 3)]
    return lines


def _cross_targets(data: TableInput, config: dict) -> list[str]:
    planned = [t for p in data.runs.get(config["config"], []) for t in p.cross_eval]
    published = [r.get("test") for r in (data.published.find_all("cross", run=config["config"]) if data.published else [])]
    return [t for t in dict.fromkeys(planned + published) if t != config.get("dataset")]


def _cross_row(label: str, stats: dict, in_domain: dict | None, row: dict | None, with_published: bool) -> list[str]:
    cells = [label]
    for metric in METRICS:
        cells.append(ours(stats[metric.key], metric))
        if with_published:
            cells.append(theirs(row, metric.key, metric))
        if in_domain is None:
            cells += ["-", "-"] if with_published else ["-"]
            continue
        ours_in, ours_out = in_domain[metric.key]["mean"], stats[metric.key]["mean"]
        cells.append(number(None if ours_in is None or ours_out is None else ours_in - ours_out, metric))
        if with_published:
            cells.append(theirs(row, f"drop_{metric.key}", metric))
    return cells


def _cross(data: TableInput, with_published: bool) -> list[str]:
    lines: list[str] = []
    headers = ["Train → Test"]
    for metric in METRICS:
        pair = [metric.header, f"Drop {metric.header}"]
        headers += [h for name in pair for h in ([name, f"{name} published"] if with_published else [name])]
    for config in data.configs:
        targets = _cross_targets(data, config)
        if not targets:
            continue
        source, name = config.get("dataset"), config["config"]
        in_domain = {m.key: config["values"][m.key] for m in METRICS}
        rows = [_cross_row(f"{source} → {source}", in_domain, None, _find(data, "cross", run=name, test=source),
                           with_published)]
        rows += [_cross_row(f"{source} → {t}", data.cross(name, t), in_domain, _find(data, "cross", run=name, test=t),
                            with_published) for t in targets]
        lines += [f"## Cross-evaluation for {config.get('model')}: `{name}` (seed Tables 5 and 6)", "",
                  "Evaluated without fine-tuning on each target's validation split; Drop = in-domain − cross-domain "
                  "(positive = worse).", "", *markdown_table(headers, rows, 1)]
    return lines


def _signed(value: float | None, metric: Metric, delta: bool) -> str:
    return number(value, metric) if value is None or not delta else f"{value:+.{metric.digits}f}"


CLASS_KEYS = ("a_iou", "b_iou", "delta_iou", "a_dice", "b_dice", "delta_dice")


def _class_values(a: dict, b: dict, name: str) -> dict[str, float | None]:
    values: dict[str, Any] = {f"{side}_{key}": per.get(name, {}).get(key, mean_std([]))["mean"]
                              for side, per in (("a", a), ("b", b)) for key in ("iou", "dice")}
    for key in ("iou", "dice"):
        both = values[f"a_{key}"] is not None and values[f"b_{key}"] is not None
        values[f"delta_{key}"] = values[f"a_{key}"] - values[f"b_{key}"] if both else None
    return values


def _class_rows(data: TableInput, pair: list[str], published: dict[int, dict] | None) -> list[list[str]]:
    (names, a), (_, b) = data.per_class(pair[0]), data.per_class(pair[1])
    names = names or sorted(set(a) | set(b))
    three = Metric("iou", "", digits=3)
    rows = []
    for index, name in enumerate(names):
        values = _class_values(a, b, name)
        large = values["delta_iou"] is not None and abs(values["delta_iou"]) > PER_CLASS_MIN_IOU_DELTA
        if not large and index not in (published or {}):
            continue
        cells = [f"{index} {name}"]
        for key in CLASS_KEYS:
            cells.append(_signed(values[key], three, key.startswith("delta")))
            if published is not None:
                row = published.get(index)
                cells.append(_signed(row.get(key) if row else None, three, key.startswith("delta")))
        rows.append(cells)
    return rows


def _per_class(data: TableInput) -> list[str]:
    pair = data.study.per_class_delta
    if not pair:
        return []
    published = None
    if data.published is not None:
        published = {int(r["class"]): r for r in data.published.find_all("per_class", a=pair[0], b=pair[1])}
    headers = ["class"]
    for column in (f"{pair[0]} IoU", f"{pair[1]} IoU", "ΔIoU", f"{pair[0]} Dice", f"{pair[1]} Dice", "ΔDice"):
        headers += [column, f"{column} published"] if published is not None else [column]
    rows = _class_rows(data, pair, published)
    return ["## Classes with the largest per-class IoU differences (seed Table 7)", "",
            f"Δ = `{pair[0]}` − `{pair[1]}`, means over each configuration's runs; rows: the classes with "
            f"|ΔIoU| > {PER_CLASS_MIN_IOU_DELTA} here, and those of the published table (class index and name).", "",
            *(markdown_table(headers, rows, 1) if rows else ["No class differs by more than that.", ""])]


def _compute(data: TableInput) -> list[str]:
    seconds, memory = Metric("epoch_seconds", "", 1, 1), Metric("peak_train_memory_mb", "", 1, 0)
    rows = [[c["config"], str(c.get("size")), ours(c["values"]["epoch_seconds"], seconds),
             ours(c["values"]["peak_train_memory_mb"], memory)] for c in data.configs]
    return ["## Compute cost (asked for by the seed's section 3.5, not reported there)", "",
            "Training seconds per epoch (validation included) and peak training memory (CUDA allocator; "
            f"{NO_VALUE} on CPU), from each run's history.csv.", "",
            *markdown_table(["run", "input", "s/epoch", "peak train MB"], rows, 2)]


def render_seg_review(data: TableInput) -> list[str]:
    with_published = data.published is not None
    return [*_baselines(data, with_published), *_ablations(data, with_published), *_cross(data, with_published),
            *_per_class(data), *_compute(data)]
