"""bench.md and the plots next to bench.json: latency and throughput against batch size, and mIoU
(from parity.json / metrics.json) against latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segdeploy.core import fileio
from segdeploy.core.rundir import RunDir

PLOTS = ("latency_vs_batch.png", "throughput_vs_batch.png", "accuracy_vs_latency.png")


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _series(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(variant, precision) -> rows in sweep order."""
    series: dict[tuple[str, str], list[dict]] = {}
    for row in results:
        series.setdefault((row.get("variant", row["backend"]), row["precision"]), []).append(row)
    return series


def miou_by_backend(run: RunDir) -> tuple[dict[tuple[str, str], float], str | None]:
    """(backend, precision) -> mIoU measured on the validation images, and where it came from."""
    found: dict[tuple[str, str], float] = {}
    sources = []
    if run.parity.is_file():
        parity = fileio.read_json(run.parity)
        for row in parity.get("results", []):
            if row.get("miou") is not None:
                found[(row["backend"], row["precision"])] = row["miou"]
            if row.get("miou_reference") is not None:
                found.setdefault((parity.get("reference", "torch"), parity.get("reference_precision", "fp32")),
                                 row["miou_reference"])
        sources.append("parity.json")
    if run.metrics.is_file():
        metrics = fileio.read_json(run.metrics)
        if metrics.get("miou") is not None:
            found.setdefault((metrics.get("backend", "torch"), metrics.get("precision", "fp32")), metrics["miou"])
            sources.append("metrics.json")
    return found, " + ".join(sources) or None


def markdown(report: dict, mious: dict[tuple[str, str], float] | None = None) -> str:
    env, model, settings = report["environment"], report["model"], report.get("settings", {})
    device_name = env.get("gpu") if str(settings.get("device", "cpu")).startswith("cuda") else env.get("cpu")
    lines = [
        f"# Benchmark: {model['name']} {model['encoder']} at {report['input_size']}x{report['input_size']}",
        "",
        f"- device: {settings.get('device', '?')} ({device_name}), threads {env.get('torch_threads')}, "
        f"segdeploy {env.get('segdeploy')} at {str(env.get('git_commit'))[:12]}",
        f"- torch {env['packages'].get('torch')}, onnxruntime {env['packages'].get('onnxruntime') or env['packages'].get('onnxruntime-gpu')}, "
        f"TensorRT {env['packages'].get('tensorrt') or '-'}",
    ]
    if env.get("gpu"):
        lines.append(f"- GPU {env['gpu']}, driver {env.get('driver')}, CUDA (torch) {env.get('cuda_runtime_torch')}, "
                     f"compute capability {env.get('compute_capability')}, SM clock at start "
                     f"{env.get('sm_clock_mhz_at_start')} / max {env.get('sm_clock_max_mhz')} MHz")
    flops = model.get("flops_per_image")
    lines.append(f"- model: {_fmt(flops / 1e9 if flops else None, '.2f')} GFLOP per image (torch.utils.flop_counter)")
    w = settings.get("warmup") or {}
    lines.append(f"- timing: {settings.get('iters')} timed iterations ({settings.get('timer', 'see rows')}) after a "
                 f"warm-up of at least {w.get('min_iters')} iterations, continued until the median of the last "
                 f"{w.get('window')} is within {w.get('rtol')} of the window before (at most {w.get('max_iters')}); "
                 f"transfer {'included' if settings.get('include_transfer') else 'excluded'}; "
                 f"each cell in {'a fresh subprocess' if settings.get('isolation') == 'subprocess' else 'this process'}")
    lines += ["", "| variant | precision | batch | status | p50 ms | p90 ms | p99 ms | mean ms | img/s | TFLOP/s "
                  "| peak MB | memory kind | warm-up |",
              "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for row in report["results"]:
        lat = row.get("latency_ms") or {}
        warm = row.get("warmup_iterations")
        warm_text = "-" if warm is None else f"{warm}{'' if row.get('warmup_stable') else ' (unstable)'}"
        lines.append(
            f"| {row.get('variant', row['backend'])} | {row['precision']} | {row['batch_size']} | {row['status']} "
            f"| {_fmt(lat.get('p50'))} | {_fmt(lat.get('p90'))} | {_fmt(lat.get('p99'))} | {_fmt(lat.get('mean'))} "
            f"| {_fmt(row.get('throughput_ips'), '.1f')} | {_fmt(row.get('tflops'), '.3f')} "
            f"| {_fmt(row.get('peak_memory_mb'), '.0f')} | {row.get('memory_kind') or '-'} | {warm_text} |")
    series = _series(report["results"])
    batches = sorted({row["batch_size"] for row in report["results"]})
    lines += ["", "## Throughput (images/s) by batch size", "",
              "| variant | precision | " + " | ".join(str(b) for b in batches) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in batches) + " |"]
    for (variant, precision), rows in series.items():
        by_batch = {row["batch_size"]: row for row in rows}
        cells = []
        for b in batches:
            row = by_batch.get(b)
            if row is None:
                cells.append("")
            elif row["status"] == "ok":
                cells.append(_fmt(row["throughput_ips"], ".1f"))
            else:
                cells.append(row["status"].split(":")[0])
        lines.append(f"| {variant} | {precision} | " + " | ".join(cells) + " |")
    if mious:
        lines += ["", "## Accuracy", "", "| backend | precision | mIoU % |", "| --- | --- | ---: |"]
        lines += [f"| {b} | {p} | {100 * m:.2f} |" for (b, p), m in sorted(mious.items())]
    lines += ["", "Memory kinds: `process_peak_rss` = peak RSS of the cell's process (CPU); `device_nvml_process` = "
              "this process's device memory per NVML, CUDA context included; `device_nvml_minus_baseline` / "
              "`device_mem_get_info_all_processes` = device-wide used memory (see bench.json `memory` for the torch "
              "allocator peak).", ""]
    return "\n".join(lines)


def _ok_series(report: dict):
    """(variant, precision, rows that ran, all rows) per series, skipping series where nothing ran."""
    for (variant, precision), rows in _series(report["results"]).items():
        ok = [row for row in rows if row["status"] == "ok"]
        if ok:
            yield variant, precision, ok, rows


def _plot_against_batch(report: dict, path: Path, value, ylabel: str, title: str) -> None:
    from matplotlib.ticker import FuncFormatter

    from segdeploy.evaluation.figures import new_figure, save_figure

    fig = new_figure(8, 5)
    ax = fig.add_subplot()
    plotted = 0
    for variant, precision, ok, rows in _ok_series(report):
        ax.plot([row["batch_size"] for row in ok], [value(row) for row in ok], marker="o",
                label=f"{variant} ({precision})")
        oom = [row for row in rows if row["status"] == "oom"]
        if oom:
            ax.plot([row["batch_size"] for row in oom], [value(ok[-1])] * len(oom), "x", color="red")
        plotted += 1
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))  # 1, 2, 4 ... not 1.0, 2.0
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if plotted:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no successful cells", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    save_figure(fig, path)


def _plot_accuracy(report: dict, mious: dict[tuple[str, str], float], source: str | None, path: Path) -> None:
    from segdeploy.evaluation.figures import new_figure, save_figure

    fig = new_figure(7, 5)
    ax = fig.add_subplot()
    points = 0
    for variant, precision, ok, _ in _ok_series(report):
        row = min(ok, key=lambda r: r["batch_size"])
        miou = mious.get((row["backend"], precision))
        if miou is None:
            continue
        ax.scatter(row["latency_ms"]["p50"], 100 * miou, s=40)
        ax.annotate(f"{variant} ({precision}), batch {row['batch_size']}", (row["latency_ms"]["p50"], 100 * miou),
                    fontsize=8, xytext=(4, 4), textcoords="offset points")
        points += 1
    ax.set_xlabel("p50 latency (ms) at the smallest batch measured")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"accuracy vs latency (mIoU from {source or 'nothing'})")
    ax.grid(True, alpha=0.3)
    if not points:
        ax.text(0.5, 0.5, "no mIoU for these backends:\nrun `segdeploy eval` or `segdeploy parity` first",
                ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    save_figure(fig, path)


def write_reports(run: RunDir, report: dict, folder: Path | None = None) -> list[Path]:
    """bench.md and the three plots into `folder` (default: the run directory)."""
    folder = Path(folder or run.path)
    mious, source = miou_by_backend(run)
    md = folder / "bench.md"
    fileio.write_text(md, markdown(report, mious))
    paths = [md]
    _plot_against_batch(report, folder / PLOTS[0], lambda r: r["latency_ms"]["p50"], "p50 latency (ms)",
                        "latency vs batch size")
    _plot_against_batch(report, folder / PLOTS[1], lambda r: r["throughput_ips"], "images / s",
                        "throughput vs batch size")
    _plot_accuracy(report, mious, source, folder / PLOTS[2])
    return paths + [folder / name for name in PLOTS]
