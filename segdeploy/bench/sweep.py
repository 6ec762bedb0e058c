"""`segdeploy bench`: latency, throughput, memory and TFLOP/s per runtime variant x batch size, each next to
the accuracy (mIoU, argmax agreement with torch FP32) of the same variant on the validation split.

Each cell runs in a fresh subprocess by default (cell.py), on the same seeded input, already on the
device; the sweep records OOMs, dead children and unavailable variants as rows and goes on. Accuracy is
measured once per variant after the timed sweep (or reused from parity.json for the same file).
Reports: RUN/bench.json, RUN/bench.md and plots (report.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from typing import Any, Callable

from rich.markup import escape

from segdeploy.bench.cell import cell_spec, failure_row, run_cell, run_cell_subprocess
from segdeploy.bench.timing import CI_METHOD, StopPolicy, WarmupPolicy
from segdeploy.core import fileio
from segdeploy.core.config import BenchConfig, parse_batch_sizes
from segdeploy.core.errors import ConfigError
from segdeploy.core.progress import console, err_console, make_progress
from segdeploy.core.env import resolve_device
from segdeploy.core.rundir import RunDir
from segdeploy.core.size import input_hw
from segdeploy.core.threads import torch_threads
from segdeploy.core.unit import FileUnit
from segdeploy.core.validate import validate_section
from segdeploy.evaluation.parity import require_measured, require_runnable
from segdeploy.runtime.variants import (BACKENDS, REFERENCE, RuntimeContext, Variant, artifact_path, load_plugins,
                                        parse_backends, require_artifacts, runner_device, unavailable_reason)


def model_flops(run: RunDir, size: int) -> float | None:
    """FLOPs of one image through the model (torch.utils.flop_counter; a multiply-add counts 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from segdeploy.models.checkpoint import load_model

    model, _, _ = load_model(run)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, *input_hw(size)))
    total = counter.get_total_flops()
    return float(total) if total else None


def check_settings(run: RunDir, cfg: BenchConfig) -> list[Variant]:
    """Everything that is the user's to fix is a one-line error before any cell runs."""
    validate_section("bench", cfg)
    for name in cfg.precisions:
        run.onnx_path(name)  # an unknown precision
    parse_batch_sizes(cfg.batch_sizes)
    load_plugins(cfg.plugins)
    variants = parse_backends(cfg.backends, cfg.device, cfg.precisions)
    require_artifacts(variants, run, cfg.device)
    require_runnable(run.bench, variants, cfg.device)
    return variants


def _measure_variant(run: RunDir, variant: Variant, cfg: BenchConfig, size: int,
                     on_row: Callable[[dict], None]) -> list[dict]:
    sizes = parse_batch_sizes(cfg.batch_sizes)
    queue = [1] if sizes == "auto" else list(sizes)
    policy = WarmupPolicy(cfg.warmup, cfg.warmup_window, cfg.warmup_rtol, cfg.max_warmup)
    artifact = artifact_path(variant, run)  # which file was timed: `segdeploy deploy` refuses stale rows
    sha = fileio.sha256_cached(artifact) if artifact.is_file() else None
    rows = []
    while queue:
        batch = queue.pop(0)
        reason = unavailable_reason(variant, cfg.device)
        if reason:
            row = failure_row(variant, runner_device(variant, cfg.device), batch, f"unavailable: {reason}")
        else:
            spec = cell_spec(variant, run.path.resolve(), cfg, batch, size, policy)
            row = run_cell_subprocess(spec, cfg.cell_timeout_s) if cfg.isolate else run_cell(spec)
            row["isolated"] = cfg.isolate
        row["artifact_sha256"] = sha
        rows.append(row)
        on_row(row)
        if sizes == "auto" and row["status"] == "ok" and batch * 2 <= cfg.auto_max_batch:
            queue.append(batch * 2)
    return rows


def run_bench(run: RunDir, cfg: BenchConfig, write_reports: bool = True,
              on_row: Callable[[dict], None] | None = None) -> dict:
    """Time every variant x batch size of `cfg` -> RUN/bench.json (and bench.md, plots); torch's threads are
    `cfg.threads` while it runs, as they were afterwards."""
    with torch_threads(cfg.threads) as threads:
        cfg.threads = threads
        return _run_bench(run, cfg, write_reports, on_row)


def bench_environment(variants: list[Variant], cfg: BenchConfig) -> dict:
    """The environment block, with the runtime facts of the backends asked for only (the parent loads no
    runtime it does not run: OpenVINO's CPU plugin only when an openvino variant is in the sweep)."""
    from segdeploy.core.env import environment

    # allow_torch_cuda: the cells must find the device empty
    env = environment(cfg.threads, allow_torch_cuda=not cfg.isolate, probe_openvino=False)
    for backend in sorted({variant.backend for variant in variants}):
        env.update(BACKENDS[backend].environment())
    return env


def _run_bench(run: RunDir, cfg: BenchConfig, write_reports: bool, on_row: Callable[[dict], None] | None) -> dict:
    cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device))  # `auto`: CUDA when torch sees a GPU
    variants = check_settings(run, cfg)
    size = run.load_config().data.size
    env = bench_environment(variants, cfg)
    from segdeploy.core.env import busy_cpu_warning

    if warning := busy_cpu_warning(env):
        env["busy_cpu_warning"] = warning
        err_console.print(f"warning: {warning}", highlight=False, soft_wrap=True)
    flops = model_flops(run, size)
    sizes = parse_batch_sizes(cfg.batch_sizes)
    results: list[dict] = []
    with make_progress() as progress:
        task = progress.add_task("bench", total=None if sizes == "auto" else len(variants) * len(sizes), info="")

        def record(row: dict) -> None:
            row["tflops"] = flops * row["throughput_ips"] / 1e12 if flops and row.get("throughput_ips") else None
            progress.update(task, advance=1, info=f"{row['variant']} batch {row['batch_size']}")
            _print_row(row)
            if on_row:
                on_row(row)

        for variant in variants:
            results += _measure_variant(run, variant, cfg, size, record)
    require_measured(run.bench, results, ("ok", "oom"))
    accuracy = variant_accuracy(run, variants, cfg, env) if cfg.accuracy else []
    attach_accuracy(results, accuracy)
    report = {"environment": env, "input_size": size, "model": _model_block(run, flops),
              "settings": {**asdict(cfg), "timer": "cuda_events" if cfg.device.startswith("cuda")
                           else "host_clock_after_sync", "ci_method": CI_METHOD, "ci_confidence": StopPolicy.confidence,
                           "input": "seeded standard-normal float32 NCHW, identical for every backend; deploy "
                                    "graphs (+deploy): seeded uint8 NHWC images, mask out"},
              "accuracy": accuracy, "results": results}
    with FileUnit(run.path) as unit:  # bench.json, bench.md and the plots change together
        unit.write_json(run.bench, report)
        if write_reports:
            from segdeploy.bench.report import write_reports as write_all

            staging = unit.folder(run.path, replace=False)
            report["reports"] = [str(run.path / p.name) for p in write_all(run, report, staging)]
    return report


def _model_block(run: RunDir, flops: float | None) -> dict[str, Any]:
    from segdeploy.models.registry import output_stride

    cfg = run.load_config()
    return {"name": cfg.model.name, "encoder": cfg.model.encoder, "output_stride": output_stride(cfg.model),
            "flops_per_image": flops, "flops_counter": "torch.utils.flop_counter.FlopCounterMode (multiply-add = 2 FLOPs)"}


ACCURACY_KEYS = ("miou", "argmax_agreement", "miou_delta", "file_size_mb")


def variant_accuracy(run: RunDir, variants: list[Variant], cfg: BenchConfig, machine: dict) -> list[dict]:
    """mIoU and agreement with torch FP32 per variant: parity.json's row when it is for the same file,
    device and images on this machine, ISA caps and runtime versions, else measured now (after the timed sweep, so
    no cell shares the device with it). `machine`: this bench's environment block."""
    from segdeploy.core.env import machine_differences
    from segdeploy.evaluation.parity import measure_variants, validation_set, variant_row
    runnable = [v for v in variants if unavailable_reason(v, cfg.device) is None]
    if not runnable:
        return []
    dataset, _ = validation_set(run, cfg.max_images)
    parity = run.read_parity() or {}
    if machine_differences(parity.get("environment"), machine):
        parity = {}  # another CPU's, ISA cap's or runtime's figures (INT8 kernels differ): measure them here
    reused, missing = [], []
    for variant in runnable:
        identity = variant_row(variant, run, cfg.device)
        found = next((r for r in parity.get("results", []) if parity.get("images") == len(dataset)
                      and r.get("status") == "ok" and all(r.get(k) == identity[k] for k in
                                                          ("variant", "precision", "graph", "device", "artifact_sha256"))),
                     None)
        if found:
            reused.append({**found, "source": "parity.json", "images": len(dataset)})
        elif variant != REFERENCE:
            missing.append(variant)
    console.print(f"accuracy on {len(dataset)} validation images: {len(missing)} variant(s) to run, "
                  f"{len(reused)} from parity.json", highlight=False)
    reference = next((r["miou_reference"] for r in reused if r.get("miou_reference") is not None), None)
    measured = []
    if missing or reference is None:
        measured, reference = measure_variants(run, missing, dataset, RuntimeContext(run, cfg.device, cfg.threads))
    rows = reused + [{**row, "source": "measured", "images": len(dataset)} for row in measured]
    if REFERENCE in runnable:  # the reference itself
        rows.append({**variant_row(REFERENCE, run, cfg.device), "miou": reference, "argmax_agreement": 1.0,
                     "miou_delta": 0.0, "source": "reference", "images": len(dataset)})
    return rows


def attach_accuracy(results: list[dict], accuracy: list[dict]) -> None:
    by_variant = {(a["variant"], a["precision"]): a for a in accuracy}
    for row in results:
        found = by_variant.get((row["variant"], row["precision"]), {})
        for key in ACCURACY_KEYS:
            row[key] = found.get(key)


def _print_row(row: dict) -> None:
    if row["status"] == "ok":
        from segdeploy.bench.report import p50_text

        console.print(f"{row['variant']}/{row['precision']} batch {row['batch_size']}: p50 {p50_text(row)} ms "
                      f"({row.get('iterations')} iterations, {row.get('stop_reason')}), "
                      f"{row['throughput_ips']:.1f} img/s", highlight=False)
    else:
        console.print(f"{row['variant']}/{row['precision']} batch {row['batch_size']}: {escape(row['status'])}",
                      highlight=False)
