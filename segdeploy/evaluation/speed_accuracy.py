"""The report's "Speed against accuracy": each run's mIoU (RUN/metrics.json) against its latency (one row of
RUN/bench.json: the same variant, precision and batch size for every run) and against its training wall
clock (history.csv's seconds, summed). bench.json is read here as plain JSON through RunDir: evaluation sits
below bench in the layers, so the rows are parsed here, not by bench's own report code."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from segdeploy.core.errors import ConfigError
from segdeploy.core.plotting import new_figure, save_figure
from segdeploy.core.rundir import PRECISIONS, RunDir

PREFERRED = "openvino"  # the default latency variant where every run has it: what a CPU deployment runs


@dataclass(frozen=True)
class LatencyChoice:
    """Which bench.json row gives a run's latency. backend None: openvino where the runs have it, else the
    variant with a usable row in most runs (the first one found on a tie)."""

    backend: str | None = None
    precision: str = "fp32"
    batch: int = 1

    def checked(self) -> "LatencyChoice":
        """The backend spelt as bench.json spells variants (`onnxruntime+deploy`), or a one-line error."""
        if self.batch < 1:
            raise ConfigError(f"--latency-batch must be at least 1, got {self.batch}")
        if self.precision not in (*PRECISIONS, "bf16"):  # bf16: torch+bf16's rows
            raise ConfigError(f"--latency-precision must be one of {', '.join((*PRECISIONS, 'bf16'))}, "
                              f"got {self.precision!r}")
        if self.backend is None:
            return self
        from segdeploy.runtime.variants import parse_variant

        return LatencyChoice(parse_variant(self.backend, self.precision).name, self.precision, self.batch)


def _failed_accuracy(bench: dict) -> set[tuple[str, str]]:
    """(variant, precision) whose accuracy pass ran and failed: their latency is not used."""
    return {(a.get("variant"), a.get("precision")) for a in bench.get("accuracy") or []
            if a.get("status", "ok") != "ok"}


def usable_rows(bench: dict | None, precision: str, batch: int) -> dict[str, dict]:
    """variant -> its timed row at `precision` and `batch` (status ok, a p50, accuracy not failed)."""
    if not bench:
        return {}
    failed = _failed_accuracy(bench)
    rows: dict[str, dict] = {}
    for row in bench.get("results") or []:
        variant = row.get("variant", row.get("backend"))
        if (row.get("status") == "ok" and row.get("precision") == precision and row.get("batch_size") == batch
                and (row.get("latency_ms") or {}).get("p50") is not None and (variant, precision) not in failed):
            rows.setdefault(variant, row)
    return rows


def choose_variant(benches: list[dict | None], choice: LatencyChoice) -> str | None:
    if choice.backend:
        return choice.backend
    counts: dict[str, int] = {}
    for bench in benches:
        for variant in usable_rows(bench, choice.precision, choice.batch):
            counts[variant] = counts.get(variant, 0) + 1
    if not counts:
        return None
    if counts.get(PREFERRED) == max(counts.values()):
        return PREFERRED
    return max(counts, key=counts.get)  # the first of the most common (dicts keep insertion order)


def bench_command(run_path: str, variant: str, choice: LatencyChoice) -> str:
    """What measures the chosen row for a run, as it can be typed (export first when its graph is missing)."""
    run = RunDir(Path(run_path))
    bench = shlex.join(["segdeploy", "bench", run_path, "--backends", variant, "--precision", choice.precision,
                        "--batch-sizes", str(choice.batch)])
    needs_graph = not variant.startswith("torch")
    deploy = "+deploy" in variant
    if needs_graph and not run.onnx_path(choice.precision, deploy=deploy).is_file():
        export = ["segdeploy", "export", run_path, "--precision", choice.precision] + (["--deploy"] if deploy else [])
        return f"{shlex.join(export)} && {bench}"
    return bench


def speed_rows(summaries: list[dict], choice: LatencyChoice) -> dict:
    """report.json's "speed_accuracy": the variant chosen, one row per run, and the runs without a latency."""
    runs = [RunDir(Path(s["run"])) for s in summaries]
    benches = [run.read_bench() for run in runs]
    variant = choose_variant(benches, choice)
    rows, missing = [], []
    for s, run, bench in zip(summaries, runs, benches):
        history = run.read_history()
        seconds = [r["seconds"] for r in history if r.get("seconds") is not None]
        row = usable_rows(bench, choice.precision, choice.batch).get(variant) if variant else None
        rows.append({"run": s["run"], "name": s["name"], "model": s["model"], "encoder": s["encoder"],
                     "parameters": s["parameters"], "miou": s["miou"],
                     "latency_ms": row["latency_ms"]["p50"] if row else None,
                     "latency_variant_miou": row.get("miou") if row else None,
                     "train_seconds": sum(seconds) if seconds else None, "epochs": len(history)})
        if row is None:
            why = "no bench.json" if bench is None else "bench.json has no usable row for it"
            missing.append({"run": s["run"], "name": s["name"], "why": why,
                            "command": bench_command(s["run"], variant or PREFERRED, choice)})
    return {"variant": variant, "precision": choice.precision, "batch_size": choice.batch,
            "latency": "p50 latency in ms of that bench.json row (status ok, accuracy pass not failed)",
            "train_seconds": "sum of history.csv's seconds: training and validation of every epoch",
            "rows": rows, "missing": missing}


def _fmt(value, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{scale * value:.{digits}f}"


def speed_section(speed: dict, figure: str | None) -> list[str]:
    variant = speed["variant"] or PREFERRED
    label = f"{variant} {speed['precision']}, batch {speed['batch_size']}"
    lines = ["## Speed against accuracy", "",
             f"mIoU % (RUN/metrics.json) against p50 latency in ms ({label}, from each run's bench.json; rows whose "
             "accuracy pass failed are not used) and against training wall clock in minutes (history.csv's "
             "seconds summed: training and validation of every epoch).", "",
             f"| run | model | encoder | params M | mIoU % | latency ms ({label}) | training min | epochs |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in speed["rows"]:
        lines.append(f"| {r['name']} | {r['model']} | {r['encoder']} | {_fmt(r['parameters'], 1e-6)} "
                     f"| {_fmt(r['miou'], 100)} | {_fmt(r['latency_ms'])} | {_fmt(r['train_seconds'], 1 / 60)} "
                     f"| {r['epochs']} |")
    lines.append("")
    for m in speed["missing"]:
        lines += [f"- **{m['name']}** has no {label} latency ({m['why']}), so it is left out of the latency "
                  f"plot; measure it with `{m['command']}`"]
    if speed["missing"]:
        lines.append("")
    return lines + ([f"![speed against accuracy]({figure})", ""] if figure else [])


def plot_speed(speed: dict, path: Path) -> Path:
    """Two panels: mIoU against latency (runs with one) and against training wall clock."""
    fig = new_figure(11.0, 4.5)
    latency_ax, train_ax = fig.subplots(1, 2)
    panels = ((latency_ax, "latency_ms", 1.0, f"p50 latency (ms), {speed['variant'] or PREFERRED} "
               f"{speed['precision']}, batch {speed['batch_size']}"),
              (train_ax, "train_seconds", 1 / 60, "training wall clock (min, history.csv)"))
    for ax, key, scale, xlabel in panels:
        points = [(i, r) for i, r in enumerate(speed["rows"]) if r[key] is not None and r["miou"] is not None]
        for i, r in points:  # one colour per run in both panels
            ax.scatter(scale * r[key], 100 * r["miou"], s=40, color=f"C{i % 10}")
            ax.annotate(r["name"], (scale * r[key], 100 * r["miou"]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
        if not points:
            ax.text(0.5, 0.5, "no run has this measurement", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mIoU (%)")
        ax.grid(True, alpha=0.3)
    latency_ax.set_title("mIoU against latency")
    train_ax.set_title("mIoU against training time")
    fig.tight_layout()
    return save_figure(fig, path)
