"""`segdeploy parity`: does every runtime variant give the masks torch FP32 gives, on the same images?

One comparison (`Comparison`) serves logits and intermediate features alike; `measure_variants` runs
torch FP32 and the candidate variants batch by batch over the validation split, and both `parity` and
`bench` (its accuracy columns) read their rows from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from segdeploy.core import fileio
from segdeploy.core.config import DataConfig, ParityConfig, copy_config
from segdeploy.core.env import resolve_device
from segdeploy.core.errors import BackendUnavailable, SegdeployError, first_line
from segdeploy.core.progress import make_progress
from segdeploy.core.rundir import RunDir
from segdeploy.core.threads import torch_threads
from segdeploy.core.validate import validate_section
from segdeploy.data.dataset import SegDataset
from segdeploy.data.registry import build_dataset
from segdeploy.data.metrics import confusion_matrix, summarize
from segdeploy.data.preprocess import normalize
from segdeploy.runtime.base import Runner, infer_images
from segdeploy.runtime.variants import (REFERENCE, RuntimeContext, Variant, artifact_path, build_runner,
                                        deployed_size_mb, parse_backends, require_artifacts, runner_device,
                                        unavailable_reason)


@dataclass
class Tolerance:
    min_agreement: float = 0.999  # fraction of pixels whose argmax class equals torch's
    max_miou_delta: float = 0.001  # |mIoU - mIoU_torch| as a fraction (0.001 = 0.1 point)
    max_abs_err: float | None = 1e-2  # largest |logit difference|; None: not checked


# Measured (ONNX Runtime CPU vs torch FP32, benchmarks/results/precision_cpu.json): DeepLabV3+ R50
# 256px, 1 epoch on Kvasir-SEG, 40 val images: fp16 argmax agreement 99.990%, mIoU delta 0.00 pt;
# int8 (symmetric, 32 calibration images) 99.125%, +0.22 pt. bf16 (8-bit mantissa) flips about as many
# pixels as int8 on near-tied logits. A tiny U-Net after one epoch (tests) gives fp16 99.95%, int8 ~95%
# agreement: near-tied logits of an untrained model flip easily, so INT8 is judged by mIoU there.
# Reduced precisions are not compared element-wise (max_abs_err None): a rounding-level logit change is
# harmless unless it flips the argmax.
DEFAULT_TOLERANCES = {
    "fp32": Tolerance(0.999, 0.001, 1e-2),
    # TF32 convolutions (10-bit mantissa): U-Net R18 on Kvasir, H100: max |err| 3.4e-2, 99.972% agreement
    "tf32": Tolerance(0.999, 0.001, None),
    "fp16": Tolerance(0.999, 0.001, None),
    "bf16": Tolerance(0.98, 0.01, None),
    "int8": Tolerance(0.98, 0.01, None),
}


class Comparison:
    """Differences between a reference and a candidate, accumulated exactly over batches."""

    def __init__(self, num_classes: int | None = None):
        self.max_abs = self.sum_abs = self.reference_max = 0.0
        self.count = self.agree = self.pixels = 0
        self.cm = np.zeros((num_classes, num_classes), np.int64) if num_classes else None
        self.logit_errors = True  # False: masks were compared (deploy graphs), the logit errors are n/a

    def add_mask(self, reference: np.ndarray, mask: np.ndarray, truth: np.ndarray) -> None:
        """A deploy graph's mask against the reference logits: agreement and mIoU only, since no logits
        leave the graph (max |logit err| is not applicable)."""
        self.logit_errors = False
        if mask.shape != reference.shape[:1] + reference.shape[2:]:
            raise SegdeployError(f"mask shape {list(mask.shape)} does not fit torch's logits {list(reference.shape)}: "
                                 "the graph belongs to another model (re-export the run)")
        labels = mask.astype(np.int64)
        self.agree += int((reference.argmax(1) == labels).sum())
        self.pixels += labels.size
        self.cm += confusion_matrix(truth, labels, len(self.cm))

    def add(self, reference: np.ndarray, candidate: np.ndarray, truth: np.ndarray | None = None) -> None:
        if reference.shape != candidate.shape:
            raise SegdeployError(f"output shape {list(candidate.shape)} differs from torch's {list(reference.shape)}: "
                                 "the graph belongs to another model (re-export the run)")
        diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.sum_abs += float(diff.sum())
        self.count += diff.size
        self.reference_max = max(self.reference_max, float(np.abs(reference).max(initial=0.0)))
        if self.cm is not None:
            labels = candidate.argmax(1)
            self.agree += int((reference.argmax(1) == labels).sum())
            self.pixels += labels.size
            self.cm += confusion_matrix(truth, labels, len(self.cm))

    def errors(self) -> dict:
        return {"max_abs_err": self.max_abs, "mean_abs_err": self.sum_abs / max(self.count, 1),
                "max_abs_reference": self.reference_max,
                "max_rel_err": self.max_abs / max(self.reference_max, 1e-12)}

    def logits(self, miou_reference: float) -> dict:
        miou = summarize(self.cm)["miou"]
        errors = self.errors() if self.logit_errors else {**dict.fromkeys(self.errors()), "compared": "masks"}
        return {**errors, "argmax_agreement": self.agree / max(self.pixels, 1), "miou": miou,
                "miou_reference": miou_reference, "miou_delta": miou - miou_reference}


def validation_set(run: RunDir, max_images: int | None) -> tuple[SegDataset, DataConfig]:
    data = copy_config(run.load_config()).data
    data.augment = "none"
    if max_images:
        data.max_images = max_images
    return build_dataset(data, "val"), data


def variant_row(variant: Variant, run: RunDir, device: str, status: str = "ok") -> dict:
    """The identity of a variant's result: what ran, where, on which file (hash, size)."""
    path = artifact_path(variant, run)
    exists = path.is_file()
    return {"variant": variant.name, "backend": variant.backend, "precision": variant.precision,
            "graph": variant.graph, "device": runner_device(variant, device), "status": status,
            "artifact": str(path.relative_to(run.path)) if path.is_relative_to(run.path) else str(path),
            "artifact_sha256": fileio.sha256_file(path) if exists else None,
            "file_size_mb": deployed_size_mb(variant, run)}


def _start(variants: list[Variant], ctx: RuntimeContext, stack: contextlib.ExitStack) -> tuple[dict, dict]:
    """A runner per variant that can run here (closed with `stack`); the others get a row saying why. A
    file that cannot be loaded (corrupt, another model) is the user's to fix: that error ends the command,
    nothing is written, and the runners built before it are closed by `stack`."""
    runners, statuses = {}, {}
    for variant in variants:
        try:
            runners[variant] = stack.enter_context(build_runner(variant, ctx))
            statuses[variant] = "ok"
        except BackendUnavailable as exc:
            statuses[variant] = f"unavailable: {exc}"
    return runners, statuses


def measure_variants(run: RunDir, variants: list[Variant], dataset: SegDataset, ctx: RuntimeContext,
                     batch_size: int = 8) -> tuple[list[dict], float]:
    """One row per variant (status, and for those that ran, agreement and mIoU against torch FP32), and
    torch FP32's own mIoU. Every runner is closed when it returns or raises."""
    with contextlib.ExitStack() as stack, torch_threads(ctx.threads):
        reference = stack.enter_context(build_runner(REFERENCE, ctx))
        runners, statuses = _start(variants, ctx, stack)
        comparisons = {v: Comparison(dataset.num_classes) for v in runners}
        reference_cm = _compare(dataset, batch_size, reference, runners, statuses, comparisons)
    miou_reference = summarize(reference_cm)["miou"]
    rows = []
    for variant in variants:
        row = variant_row(variant, run, ctx.device, statuses[variant])
        if statuses[variant] == "ok":
            row.update(comparisons[variant].logits(miou_reference))
        rows.append(row)
    return rows, miou_reference


def _compare(dataset: SegDataset, batch_size: int, reference: Runner, runners: dict, statuses: dict,
             comparisons: dict) -> np.ndarray:
    """Batch by batch: torch FP32's logits, then each variant's against them; returns torch's confusion matrix."""
    reference_cm = np.zeros((dataset.num_classes,) * 2, np.int64)
    with make_progress() as progress:
        task = progress.add_task("parity", total=len(dataset), info=", ".join(v.name for v in runners))
        for start in range(0, len(dataset), batch_size):
            indices = range(start, min(start + batch_size, len(dataset)))
            images, truth = dataset.image_batch(indices), dataset.masks[indices.start:indices.stop]
            normalized = normalize(images)  # once for every runner that takes normalised input
            reference_logits = infer_images(reference, images, normalized)
            reference_cm += confusion_matrix(truth, reference_logits.argmax(1), dataset.num_classes)
            for variant in [v for v in runners if statuses[v] == "ok"]:
                try:
                    _compare_batch(comparisons[variant], runners[variant], reference_logits, images, normalized, truth)
                except Exception as exc:  # noqa: BLE001 - one variant failing must not end the others
                    statuses[variant] = f"failed: {first_line(exc)}"
            progress.advance(task, len(indices))
    return reference_cm


def _compare_batch(comparison: Comparison, runner, reference_logits: np.ndarray, images: np.ndarray,
             normalized: np.ndarray, truth: np.ndarray) -> None:
    output = infer_images(runner, images, normalized)
    if runner.output_format == "mask":
        comparison.add_mask(reference_logits, output, truth)
    else:
        comparison.add(reference_logits, output, truth)


def judge(row: dict, tolerance: Tolerance) -> dict:
    """Add the tolerance and `passed` (None: did not run, so nothing is verified)."""
    row["tolerance"] = asdict(tolerance)
    if row["status"] != "ok":
        row["passed"] = None
        return row
    row["passed"] = bool(row["argmax_agreement"] >= tolerance.min_agreement
                         and abs(row["miou_delta"]) <= tolerance.max_miou_delta
                         and (tolerance.max_abs_err is None or row["max_abs_err"] is None  # masks compared
                              or row["max_abs_err"] <= tolerance.max_abs_err))
    return row


def tolerance_for(precision: str, cfg: ParityConfig) -> Tolerance:
    base = DEFAULT_TOLERANCES.get(precision, Tolerance())
    return Tolerance(base.min_agreement if cfg.min_agreement is None else cfg.min_agreement,
                     base.max_miou_delta if cfg.max_miou_delta is None else cfg.max_miou_delta,
                     base.max_abs_err if cfg.atol is None else cfg.atol)


def candidates(cfg: ParityConfig) -> list[Variant]:
    variants = parse_backends(cfg.backends, cfg.device, cfg.precisions)
    return [v for v in variants if v != REFERENCE]  # torch FP32 is the reference itself


def run_parity(run: RunDir, cfg: ParityConfig) -> dict:
    """Compare every variant of `cfg` with torch FP32 on the validation split -> RUN/parity.json."""
    validate_section("parity", cfg)
    cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device))  # `auto`: CUDA when torch sees a GPU
    variants = candidates(cfg)
    if not variants:
        raise SegdeployError("torch fp32 is the reference: name other variants (e.g. --backends onnxruntime,torch+bf16)")
    require_artifacts(variants, run, cfg.device)
    require_runnable(run.parity, variants, cfg.device)
    dataset, data = validation_set(run, cfg.max_images)
    ctx = RuntimeContext(run, cfg.device, cfg.threads)
    measured, _ = measure_variants(run, variants, dataset, ctx, cfg.batch_size)
    rows = [judge(row, tolerance_for(row["precision"], cfg)) for row in measured]
    from segdeploy.core.env import environment

    report = {"reference": "torch", "reference_precision": "fp32", "device": cfg.device,
              "dataset": data.dataset, "split": "val", "images": len(dataset), "results": rows,
              "environment": environment(cfg.threads)}  # `segdeploy deploy` compares it with the machine's
    extra = extra_graph_parity(run, dataset, ctx, cfg.batch_size)
    if extra:
        report["feature_parity"] = extra
    require_measured(run.parity, rows, ("ok",))
    fileio.write_json(run.parity, report)
    return report


def require_measured(path, rows: list[dict], statuses: tuple[str, ...]) -> None:
    """A result replaces `path` only when something was measured: rows that all say 'unavailable' or
    'failed' are an error, and the earlier result stays as it was."""
    if any(row["status"].split(":")[0] in statuses for row in rows):
        return
    reasons = sorted({f"{row.get('variant', row.get('backend'))}: {row['status']}" for row in rows})
    kept = f"{path} left as it was" if Path(path).exists() else f"{path} not written"
    raise SegdeployError(f"nothing could be measured here ({'; '.join(reasons) or 'no variant'}); {kept}")


def require_runnable(path, variants: list[Variant], device: str) -> None:
    """Before any work: when no variant can run here, say why and keep `path` as it is."""
    rows = [{"variant": v.name, "status": f"unavailable: {unavailable_reason(v, device)}"} for v in variants
            if unavailable_reason(v, device)]
    if len(rows) == len(variants):
        require_measured(path, rows, ())


def extra_graph_parity(run: RunDir, dataset: SegDataset, ctx: RuntimeContext, batch_size: int,
                       max_rel_err: float = 1e-3) -> list[dict]:
    """Intermediate graphs the model family exports (SAM2: vision_features), torch vs ONNX Runtime."""
    from segdeploy.export.sidecar import checked_extra_graph
    from segdeploy.models.checkpoint import load_model
    from segdeploy.models.registry import MODELS
    from segdeploy.runtime.ort_runner import OnnxRuntimeRunner
    from segdeploy.runtime.torch_runner import TorchRunner

    model, cfg, _ = load_model(run)
    spec = MODELS[cfg.model.name]
    graphs = spec.extra_graphs(model) if spec.extra_graphs else {}
    results = []
    for name, (module, output) in graphs.items():
        path = checked_extra_graph(run, name)
        comparison = Comparison()
        with TorchRunner(module) as reference, OnnxRuntimeRunner(path, threads=ctx.threads) as candidate, \
                torch_threads(ctx.threads):
            for start in range(0, len(dataset), batch_size):
                images = dataset.normalized_batch(range(start, min(start + batch_size, len(dataset))))
                comparison.add(reference.infer(images), candidate.infer(images))
        errors = comparison.errors()
        results.append({"output": output, "backend": "onnxruntime", "precision": "fp32", "images": len(dataset),
                        **errors, "tolerance": {"max_rel_err": max_rel_err},
                        "passed": bool(errors["max_rel_err"] <= max_rel_err)})
    return results
