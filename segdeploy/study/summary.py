"""A study's summary: one row per configuration, mean +- std over seeds, ablations as deltas.

Everything is read from the run directories (metrics.json, history.csv, checkpoints, parity.json,
bench.json), so the summary can be rebuilt at any time, and keys that later versions add to those
files (e.g. `hd95` in metrics.json) appear as columns as soon as they are there.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segdeploy.core.unit import FileUnit
from segdeploy.evaluation.stats import format_mean_std, mean_std

from segdeploy.study.grid import PlannedRun, Study, config_difference


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    scale: float = 1.0
    digits: int = 2


BASE_COLUMNS = [
    Column("pixel_accuracy", "PA %", 100),
    Column("miou", "mIoU %", 100),
    Column("mean_dice", "Dice %", 100),
    Column("hd95", "HD95 px", 1),
    Column("epoch_seconds", "s/epoch", 1, 1),
    Column("peak_train_memory_mb", "peak train MB", 1, 0),
    Column("params_m", "params M", 1, 2),
]
LABELS = ["model", "encoder", "loss", "output_stride", "size", "encoder_weights", "dataset"]


# --------------------------------------------------------------------------- reading one run


def _float(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(result) else result


def collect_run(study: Study, planned: PlannedRun) -> dict[str, Any]:
    """The numbers of one run directory; None where a file or key is missing."""
    from segdeploy.models.checkpoint import checkpoint_parameters

    run = study.run_dir(planned)
    row: dict[str, Any] = {"run": planned.name, "config": planned.config_name, "baseline": planned.baseline,
                           **planned.labels}
    history = run.read_history()
    metrics = run.read_metrics()
    if metrics is not None:
        row["metrics_source"] = "eval"
        for key in ("pixel_accuracy", "miou", "mean_dice", "hd95"):
            row[key] = _float(metrics.get(key))
    elif history:
        row["metrics_source"] = "last epoch"
        for key in ("pixel_accuracy", "miou", "mean_dice"):
            row[key] = history[-1].get(f"val_{key}")
    cost = run.training_cost()
    row["epochs"] = cost["epochs"]
    row["epoch_seconds"] = cost["seconds_per_epoch"]
    row["peak_train_memory_mb"] = cost["peak_memory_mb"]
    params = checkpoint_parameters(run)
    row["params_m"] = params / 1e6 if params is not None else None
    for name in planned.cross_eval:
        cross = run.read_json(run.cross_metrics(name))
        for key in ("miou", "mean_dice"):
            row[f"cross:{name}:{key}"] = _float(cross.get(key)) if cross else None
    parity = run.read_parity()
    if parity is not None:
        results = parity.get("results", [])
        row["parity"] = "pass" if results and all(r.get("passed") for r in results) else "FAIL"
    bench = run.read_bench()
    if bench is not None:
        by_backend: dict[str, list[dict]] = {}
        for result in bench.get("results", []):
            if isinstance(result.get("latency_ms"), dict) and result.get("throughput_ips") is not None:
                label = result.get("backend", "?")
                if result.get("precision", "fp32") != "fp32":
                    label += f"/{result['precision']}"
                by_backend.setdefault(label, []).append(result)
        for label, results in by_backend.items():
            smallest = min(results, key=lambda r: r.get("batch_size", 0))
            largest = max(results, key=lambda r: r.get("batch_size", 0))
            row[f"bench:{label}:latency_ms"] = _float(smallest["latency_ms"].get("p50"))
            row[f"bench:{label}:latency_batch"] = smallest.get("batch_size")
            row[f"bench:{label}:throughput_ips"] = _float(largest.get("throughput_ips"))
            row[f"bench:{label}:throughput_batch"] = largest.get("batch_size")
    return row


# --------------------------------------------------------------------------- aggregation


def aggregate(rows: list[dict], keys: list[str]) -> list[dict]:
    """One entry per configuration (in first-seen order) with `key` -> (mean, std) and the seed count."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["config"], []).append(row)
    configs = []
    for config, members in groups.items():
        first = members[0]
        entry = {"config": config, "baseline": first.get("baseline"), "seeds": len(members),
                 "runs": [m["run"] for m in members], **{k: first.get(k) for k in LABELS},
                 "values": {k: mean_std([m.get(k) for m in members]) for k in keys}}
        for key in ("parity", "metrics_source"):
            states = {m.get(key) for m in members if m.get(key)}
            entry[key] = "FAIL" if "FAIL" in states else (states.pop() if len(states) == 1 else
                                                          ", ".join(sorted(states)) or None)
        configs.append(entry)
    return configs


def add_deltas(configs: list[dict]) -> list[dict]:
    """`deltas[key]` = this configuration's mean minus its baseline's mean (ablation rows only)."""
    by_name = {c["config"]: c for c in configs}
    for config in configs:
        config["deltas"] = {}
        base = by_name.get(config.get("baseline") or "")
        if base is None or base is config:
            continue
        for key, stats in config["values"].items():
            mean, base_mean = stats["mean"], base["values"].get(key, {}).get("mean")
            config["deltas"][key] = None if mean is None or base_mean is None else mean - base_mean
    return configs


# --------------------------------------------------------------------------- writing


def dynamic_columns(rows: list[dict]) -> list[Column]:
    """Cross-dataset and benchmark columns found in the runs, in a stable order."""
    keys = sorted({k for row in rows for k in row if k.startswith(("cross:", "bench:"))})
    columns = []
    for key in keys:
        kind, name, metric = key.split(":")
        if kind == "cross":
            columns.append(Column(key, f"{name} {'mIoU' if metric == 'miou' else 'Dice'} %", 100))
        elif metric == "latency_ms":
            batch = next((r.get(f"bench:{name}:latency_batch") for r in rows if r.get(key) is not None), "?")
            columns.append(Column(key, f"{name} ms (b{batch}, p50)", 1, 2))
        elif metric == "throughput_ips":
            batch = next((r.get(f"bench:{name}:throughput_batch") for r in rows if r.get(key) is not None), "?")
            columns.append(Column(key, f"{name} img/s (b{batch})", 1, 1))
    return columns


def _number(value: float | None, column: Column) -> str:
    return "–" if value is None else f"{value * column.scale:.{column.digits}f}"


def format_cell(config: dict, column: Column) -> str:
    stats = config["values"].get(column.key, mean_std([]))
    text = format_mean_std(stats, lambda value: _number(value, column))
    delta = config.get("deltas", {}).get(column.key)
    if delta is not None:
        text += f" ({'+' if delta >= 0 else '−'}{abs(delta) * column.scale:.{column.digits}f})"
    return text


def _label(config: dict, key: str) -> str:
    value = config.get(key)
    if value is None:
        return "–"
    if key == "encoder_weights":
        return {"none": "random", "imagenet": "ImageNet"}.get(str(value), Path(str(value)).name)
    return str(value)


def _hardware() -> str:
    from segdeploy.core.env import environment

    env = environment(probe_openvino=False)  # names the machine: no runtime needs loading for that
    text = f"{env['cpu']} ({env['cpu_count']} logical CPUs, torch {env['packages'].get('torch')})"
    if env.get("gpu"):
        text = f"{env['gpu']}, CUDA {env.get('cuda')}; CPU {text}"
    return text


def render_markdown(study: Study, configs: list[dict], columns: list[Column], rows: list[dict]) -> str:
    label_headers = {"model": "model", "encoder": "encoder", "loss": "loss", "output_stride": "OS",
                     "size": "size", "encoder_weights": "init", "dataset": "dataset"}
    headers = ["configuration", *label_headers.values(), "seeds", *[c.header for c in columns]]
    has_parity = any(c.get("parity") for c in configs)
    if has_parity:
        headers.append("parity")
    lines = [f"# Study `{study.name}`", ""]
    if study.description:
        lines += [study.description.strip(), ""]
    epochs = sorted({r.get("epochs") for r in rows if r.get("epochs")})
    lines += [
        f"Made by `segdeploy study {study.path.name}` on {_hardware()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"{sum(1 for r in rows if r.get('epochs'))} of {len(rows)} runs trained "
        f"({', '.join(map(str, epochs)) or '0'} epochs), {len(configs)} configurations.",
        "",
        "Rates in %, HD95 in pixels; `a ± b` is the mean ± sample std over seeds; `(+d)`/`(−d)` is the "
        "difference of the mean to the row's baseline (ablations). Metrics come from `metrics.json` "
        "(`segdeploy eval`, validation split) or, without an eval stage, from the last epoch's validation. "
        "s/epoch includes validation; peak train MB is the CUDA allocator peak (– on CPU). "
        "Latency is the p50 at the smallest benchmarked batch, throughput at the largest.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i < 8 else "---:" for i in range(len(headers))) + "|",
    ]
    for config in configs:
        name = config["config"]
        if config.get("baseline") and config["baseline"] != name:
            name += f" (vs {config['baseline']})"
        cells = [name, *(_label(config, k) for k in label_headers), str(config["seeds"]),
                 *(format_cell(config, c) for c in columns)]
        if has_parity:
            cells.append(config.get("parity") or "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Runs: " + ", ".join(f"`runs/{r['run']}`" for r in rows), ""]
    return "\n".join(lines)


def render_csv(configs: list[dict], columns: list[Column]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["config", "baseline", *LABELS, "seeds", "runs"]
    for column in columns:
        header += [f"{column.key}_mean", f"{column.key}_std", f"{column.key}_delta"]
    header += ["parity", "metrics_source"]
    writer.writerow(header)
    for config in configs:
        line = [config["config"], config.get("baseline") or "", *(config.get(k, "") for k in LABELS),
                config["seeds"], " ".join(config["runs"])]
        for column in columns:
            stats = config["values"].get(column.key, mean_std([]))
            mean, std = stats["mean"], stats["std"]
            delta = config.get("deltas", {}).get(column.key)
            line += ["" if v is None else f"{v:.10g}" for v in (mean, std, delta)]
        line += [config.get("parity") or "", config.get("metrics_source") or ""]
        writer.writerow(["" if v is None else v for v in line])
    return buffer.getvalue()


def write_summary(study: Study) -> Path:
    """Write OUTPUT/summary.md and summary.csv from the runs that have trained; returns the .md path."""
    # a run trained from another configuration than the file now says is not shown under the new one
    rows = [collect_run(study, p) for p in study.runs
            if study.run_dir(p).config_path.is_file() and not config_difference(study.run_dir(p), p)]
    columns = BASE_COLUMNS + dynamic_columns(rows)
    columns = [c for c in columns if any(r.get(c.key) is not None for r in rows)] or BASE_COLUMNS[:3]
    configs = add_deltas(aggregate(rows, [c.key for c in columns]))
    markdown = study.output / "summary.md"
    with FileUnit(study.output) as files:  # the two summaries always describe the same runs
        files.write_text(markdown, render_markdown(study, configs, columns, rows))
        files.write_text(study.output / "summary.csv", render_csv(configs, columns))
    return markdown
