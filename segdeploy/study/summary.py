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
from typing import TYPE_CHECKING, Any

from segdeploy.core import fileio

if TYPE_CHECKING:
    from segdeploy.study.plan import PlannedRun, Study


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
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_params_cache: dict[tuple[str, float], int] = {}


# --------------------------------------------------------------------------- reading one run


def _read_json(path: Path) -> dict | None:
    try:
        return fileio.read_json(path)
    except (OSError, ValueError):
        return None


def _history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _float(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(result) else result


def parameter_count(checkpoint: Path) -> int | None:
    """Parameters of the trained model: checkpoint tensors minus BatchNorm running statistics."""
    if not checkpoint.is_file():
        return None
    key = (str(checkpoint), checkpoint.stat().st_mtime)
    if key not in _params_cache:
        from segdeploy.core.rundir import load_checkpoint

        state = load_checkpoint(checkpoint)["model"]
        _params_cache[key] = sum(t.numel() for name, t in state.items() if not name.endswith(BN_BUFFERS))
    return _params_cache[key]


def collect_run(study: "Study", planned: "PlannedRun") -> dict[str, Any]:
    """The numbers of one run directory; None where a file or key is missing."""
    run = study.run_dir(planned)
    row: dict[str, Any] = {"run": planned.name, "config": planned.config_name, "baseline": planned.baseline,
                           **planned.labels}
    history = _history(run.history)
    metrics = _read_json(run.metrics)
    if metrics is not None:
        row["metrics_source"] = "eval"
        for key in ("pixel_accuracy", "miou", "mean_dice", "hd95"):
            row[key] = _float(metrics.get(key))
    elif history:
        row["metrics_source"] = "last epoch"
        last = history[-1]
        for key in ("pixel_accuracy", "miou", "mean_dice"):
            row[key] = _float(last.get(f"val_{key}"))
    seconds = [s for s in (_float(h.get("seconds")) for h in history) if s is not None]
    row["epochs"] = len(history)
    row["epoch_seconds"] = sum(seconds) / len(seconds) if seconds else None
    peaks = [p for p in (_float(h.get("peak_gpu_memory_mb")) for h in history) if p is not None]
    row["peak_train_memory_mb"] = max(peaks) if peaks else None
    params = parameter_count(run.checkpoint("best"))
    row["params_m"] = params / 1e6 if params is not None else None
    for name in planned.cross_eval:
        from segdeploy.study.plan import cross_metrics_path

        cross = _read_json(cross_metrics_path(run, name))
        for key in ("miou", "mean_dice"):
            row[f"cross:{name}:{key}"] = _float(cross.get(key)) if cross else None
    parity = _read_json(run.parity)
    if parity is not None:
        results = parity.get("results", [])
        row["parity"] = "pass" if results and all(r.get("passed") for r in results) else "FAIL"
    bench = _read_json(run.bench)
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


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std is None for fewer than two values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


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
        for key, (mean, _) in config["values"].items():
            base_mean = base["values"].get(key, (None, None))[0]
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
    mean, std = config["values"].get(column.key, (None, None))
    text = _number(mean, column)
    if std is not None:
        text += f" ± {std * column.scale:.{column.digits}f}"
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

    env = environment()
    text = f"{env['cpu']} ({env['cpu_count']} logical CPUs, torch {env['packages'].get('torch')})"
    if env.get("gpu"):
        text = f"{env['gpu']}, CUDA {env.get('cuda')}; CPU {text}"
    return text


def render_markdown(study: "Study", configs: list[dict], columns: list[Column], rows: list[dict]) -> str:
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
            mean, std = config["values"].get(column.key, (None, None))
            delta = config.get("deltas", {}).get(column.key)
            line += ["" if v is None else f"{v:.10g}" for v in (mean, std, delta)]
        line += [config.get("parity") or "", config.get("metrics_source") or ""]
        writer.writerow(["" if v is None else v for v in line])
    return buffer.getvalue()


def write_summary(study: "Study") -> Path:
    """Write OUTPUT/summary.md and summary.csv from the runs that have trained; returns the .md path."""
    rows = [collect_run(study, p) for p in study.runs if study.run_dir(p).config_path.is_file()]
    columns = BASE_COLUMNS + dynamic_columns(rows)
    columns = [c for c in columns if any(r.get(c.key) is not None for r in rows)] or BASE_COLUMNS[:3]
    configs = add_deltas(aggregate(rows, [c.key for c in columns]))
    markdown = study.output / "summary.md"
    fileio.write_text(markdown, render_markdown(study, configs, columns, rows))
    fileio.write_text(study.output / "summary.csv", render_csv(configs, columns))
    return markdown
