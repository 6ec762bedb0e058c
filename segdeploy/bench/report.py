"""bench.md and the plots next to bench.json: one summary row per variant (accuracy next to latency),
every cell, latency and throughput against batch size, and mIoU against latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segdeploy.core import fileio
from segdeploy.core.rundir import RunDir
from segdeploy.core.size import input_hw

PLOTS = ("latency_vs_batch.png", "throughput_vs_batch.png", "accuracy_vs_latency.png")


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def p50_text(row: dict) -> str:
    """`p50 ± ci` in ms, ci the larger side of the median's 95% interval (bench/timing.py); '-' if not timed."""
    latency = row.get("latency_ms") or {}
    if latency.get("p50") is None:
        return "-"
    interval = row.get("p50_ci_ms")
    if not interval:
        return f"{latency['p50']:.2f} ± n/a"
    p50 = latency["p50"]
    return f"{p50:.2f} ± {max(p50 - interval[0], interval[1] - p50):.2f}"


def _series(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(variant, precision) -> rows in sweep order."""
    series: dict[tuple[str, str], list[dict]] = {}
    for row in results:
        series.setdefault((row.get("variant", row["backend"]), row["precision"]), []).append(row)
    return series


def summary_rows(report: dict) -> list[dict]:
    """One row per (variant, precision), as a person reads it: accuracy, latency at the smallest batch,
    best throughput and its batch, peak memory."""
    rows = []
    for (variant, precision), cells in _series(report["results"]).items():
        ok = [c for c in cells if c["status"] == "ok"]
        first = cells[0]
        row = {"variant": variant, "precision": precision, "status": "ok" if ok else first["status"],
               "file_size_mb": first.get("file_size_mb"), "miou": first.get("miou"),
               "argmax_agreement": first.get("argmax_agreement"), "latency_ms": None, "latency_batch": None,
               "throughput_ips": None, "throughput_batch": None, "peak_memory_mb": None}
        if ok:
            smallest = min(ok, key=lambda c: c["batch_size"])
            best = max(ok, key=lambda c: c["throughput_ips"])
            peaks = [c["peak_memory_mb"] for c in ok if c.get("peak_memory_mb") is not None]
            row.update(latency_ms=smallest["latency_ms"]["p50"], latency_text=p50_text(smallest),
                       latency_batch=smallest["batch_size"],
                       throughput_ips=best["throughput_ips"], throughput_batch=best["batch_size"],
                       peak_memory_mb=max(peaks) if peaks else None)
        rows.append(row)
    return rows


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def summary_table(report: dict) -> list[str]:
    accuracy = report.get("accuracy") or []
    images = next((a.get("images") for a in accuracy if a.get("images")), None)
    lines = ["| variant | precision | status | file MB | mIoU % | agreement % | p50 ± ci ms (batch) | best img/s (batch) "
             "| peak MB |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in summary_rows(report):
        latency = "-" if r["latency_ms"] is None else f"{r['latency_text']} ({r['latency_batch']})"
        throughput = "-" if r["throughput_ips"] is None else f"{r['throughput_ips']:.1f} ({r['throughput_batch']})"
        lines.append(f"| {r['variant']} | {r['precision']} | {r['status']} | {_fmt(r['file_size_mb'], '.1f')} "
                     f"| {_pct(r['miou'])} | {_pct(r['argmax_agreement'], 3)} | {latency} | {throughput} "
                     f"| {_fmt(r['peak_memory_mb'], '.0f')} |")
    note = (f"mIoU and agreement (argmax vs torch fp32, pixels) on {images} validation images, measured with "
            "the same runner" if images else "accuracy not measured (--no-accuracy, or no variant ran)")
    return lines + ["", note + "; p50 ± ci: median latency at the smallest batch measured and the larger side of its "
                       "95% confidence interval; file MB: what a deployment carries (torch: the model's weights; "
                       "otherwise the graph or engine file)."]


def _load_line(env: dict) -> list[str]:
    if not env.get("load_average_at_start"):
        return []
    busy = " (other processes kept a core busy: timings slower than on an idle machine)" if env.get("busy_cpu_warning") else ""
    return [f"- load average at start (1/5/15 min) {' / '.join(map(str, env['load_average_at_start']))} on "
            f"{env.get('cpu_affinity') or env.get('cpu_count')} CPUs{busy}"]


def _timing_line(settings: dict) -> str:
    """How each cell was timed: warm-up, then the stopping rule (bench/timing.py)."""
    cap = settings.get("iters")
    return (f"- timing ({settings.get('timer', 'see rows')}): each cell until the 95% confidence interval of its "
            f"median ({settings.get('ci_method', 'see rows')}) is within {settings.get('rel_ci')} of the median, "
            f"or {settings.get('max_time_s')} s of timed iterations, at least {settings.get('min_iters')}"
            f"{f', at most {cap}' if cap else ''} iterations, after a warm-up of at least {settings.get('warmup')} "
            f"iterations, continued until the median of the last {settings.get('warmup_window')} is within "
            f"{settings.get('warmup_rtol')} of the window before (at most {settings.get('max_warmup')}); transfer "
            f"{'included' if settings.get('include_transfer') else 'excluded'}; each cell in "
            f"{'a fresh subprocess' if settings.get('isolate') else 'this process'}")


def _isa_line(env: dict) -> str:
    caps = ", ".join(f"{k}={v}" for k, v in (env.get("isa_caps") or {}).items())
    flags = ", ".join(k for k, v in (env.get("cpu_flags") or {}).items() if v)
    return f"- CPU ISA: {env.get('effective_cpu_isa') or '?'}{f' (capped: {caps})' if caps else ''}; flags: {flags or '?'}"


def markdown(report: dict) -> str:
    env, model, settings = report["environment"], report["model"], report.get("settings", {})
    device_name = env.get("gpu") if str(settings.get("device", "cpu")).startswith("cuda") else env.get("cpu")
    lines = [
        f"# Benchmark: {model['name']} {model['encoder']} at {'x'.join(map(str, input_hw(report['input_size'])))}",
        "",
        f"- device: {settings.get('device', '?')} ({device_name}), threads {env.get('torch_threads')}, "
        f"segdeploy {env.get('segdeploy')} at {str(env.get('git_commit'))[:12]}",
        _isa_line(env),
        f"- torch {env['packages'].get('torch')}, onnxruntime {env['packages'].get('onnxruntime') or env['packages'].get('onnxruntime-gpu')}, "
        f"TensorRT {env['packages'].get('tensorrt') or '-'}",
    ]
    lines += _load_line(env)
    if env.get("gpu"):
        lines.append(f"- GPU {env['gpu']}, driver {env.get('driver')}, CUDA (torch) {env.get('cuda_runtime_torch')}, "
                     f"compute capability {env.get('compute_capability')}, SM clock at start "
                     f"{env.get('sm_clock_mhz_at_start')} / max {env.get('sm_clock_max_mhz')} MHz")
    flops = model.get("flops_per_image")
    lines.append(f"- model: {_fmt(flops / 1e9 if flops else None, '.2f')} GFLOP per image (torch.utils.flop_counter)")
    lines.append(_timing_line(settings))
    lines += ["", "## Summary", "", *summary_table(report), "", "## Cells", "",
              "| variant | precision | batch | status | p50 ± ci ms | p90 ms | p99 ms | mean ms | img/s | TFLOP/s "
                  "| peak MB | memory kind | warm-up | iterations | stopped |",
              "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    for row in report["results"]:
        lat = row.get("latency_ms") or {}
        warm = row.get("warmup_iterations")
        warm_text = "-" if warm is None else f"{warm}{'' if row.get('warmup_stable') else ' (unstable)'}"
        lines.append(
            f"| {row.get('variant', row['backend'])} | {row['precision']} | {row['batch_size']} | {row['status']} "
            f"| {p50_text(row)} | {_fmt(lat.get('p90'))} | {_fmt(lat.get('p99'))} | {_fmt(lat.get('mean'))} "
            f"| {_fmt(row.get('throughput_ips'), '.1f')} | {_fmt(row.get('tflops'), '.3f')} "
            f"| {_fmt(row.get('peak_memory_mb'), '.0f')} | {row.get('memory_kind') or '-'} | {warm_text} "
            f"| {row.get('iterations') or '-'} | {row.get('stop_reason') or '-'} |")
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
    lines += ["", "Memory kinds: `process_peak_rss` = peak RSS of the cell's process (CPU); `device_nvml_process` = "
              "this process's device memory per NVML, CUDA context included; "
              "`device_nvml_minus_idle_baseline_incl_other_processes` / `device_used_incl_other_processes_and_baseline`"
              " = device-wide used memory. bench.json `memory` also holds the torch allocator peak and, for TensorRT "
              "rows, `engine_memory_mb` (the engine's activations for the profile in use plus its weights).", ""]
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


def _plot_accuracy(report: dict, path: Path) -> None:
    from segdeploy.evaluation.figures import new_figure, save_figure

    fig = new_figure(7, 5)
    ax = fig.add_subplot()
    points = [r for r in summary_rows(report) if r["miou"] is not None and r["latency_ms"] is not None]
    for r in points:
        ax.scatter(r["latency_ms"], 100 * r["miou"], s=40)
        ax.annotate(f"{r['variant']} ({r['precision']}), batch {r['latency_batch']}", (r["latency_ms"], 100 * r["miou"]),
                    fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("p50 latency (ms) at the smallest batch measured")
    ax.set_ylabel("mIoU (%) of the same runner")
    ax.set_title("accuracy vs latency")
    ax.grid(True, alpha=0.3)
    if not points:
        ax.text(0.5, 0.5, "no variant has both a latency and an mIoU", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    save_figure(fig, path)


def write_reports(run: RunDir, report: dict, folder: Path | None = None) -> list[Path]:
    """bench.md and the three plots into `folder` (default: the run directory)."""
    folder = Path(folder or run.path)
    md = folder / "bench.md"
    fileio.write_text(md, markdown(report))
    paths = [md]
    _plot_against_batch(report, folder / PLOTS[0], lambda r: r["latency_ms"]["p50"], "p50 latency (ms)",
                        "latency vs batch size")
    _plot_against_batch(report, folder / PLOTS[1], lambda r: r["throughput_ips"], "images / s",
                        "throughput vs batch size")
    _plot_accuracy(report, folder / PLOTS[2])
    return paths + [folder / name for name in PLOTS]


def console_table(report: dict):
    """What `segdeploy bench` prints: the summary rows (accuracy next to latency) as a rich table."""
    from rich.markup import escape
    from rich.table import Table

    env, settings = report["environment"], report["settings"]
    where = env.get("gpu") if str(settings["device"]).startswith("cuda") else env["cpu"]
    table = Table(title=f"bench ({where}, {env['torch_threads']} threads)")
    for column in ("variant", "precision", "status", "file MB", "mIoU %", "agree %", "p50 ± ci ms (batch)",
                   "best img/s (batch)", "peak MB"):
        table.add_column(column, justify="right")
    for r in summary_rows(report):
        latency = "-" if r["latency_ms"] is None else f"{r['latency_text']} ({r['latency_batch']})"
        throughput = "-" if r["throughput_ips"] is None else f"{r['throughput_ips']:.1f} ({r['throughput_batch']})"
        table.add_row(r["variant"], r["precision"], escape(r["status"]), _fmt(r["file_size_mb"], ".1f"),
                      _pct(r["miou"]), _pct(r["argmax_agreement"], 3), latency, throughput,
                      _fmt(r["peak_memory_mb"], ".0f"))
    return table
