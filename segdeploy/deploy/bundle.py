"""The bundle `segdeploy deploy` writes (default RUN/deploy/): the chosen variant's graph (or TensorRT engine
and its manifest), classes.json, manifest.json, README.md, and a standalone predict.py with pixels.py.

What is deployed is what was measured: the graph is copied and its copy's sha256 must equal the one that
bench and parity recorded. predict.py is deploy/predictor.py and pixels.py is core/pixels.py, byte for byte.
Every file is written as one unit (core/unit.py): a reader finds the old bundle or the new one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from segdeploy.core import fileio, pixels
from segdeploy.core.rundir import RunDir
from segdeploy.core.size import input_hw
from segdeploy.core.unit import FileUnit
from segdeploy.deploy.graph_io import graph_io
from segdeploy.deploy.measured import Measurements, candidate_variant, copy_measured
from segdeploy.deploy.pick import Candidate, Decision
from segdeploy.deploy.targets import TARGETS
from segdeploy.runtime.variants import artifact_path

MANIFEST_FORMAT = 1
PREDICTOR = Path(__file__).with_name("predictor.py")  # the template of the bundle's predict.py


def class_record(run: RunDir, names: list[str]) -> dict[str, Any]:
    """classes.json: names, and the palette `segdeploy predict` colours masks with (None: grey PNGs)."""
    from segdeploy.deploy.predict_inputs import class_palette

    palette = class_palette(run.load_config())
    return {"names": names, "palette": None if palette is None else palette.tolist()}


def measured_block(c: Candidate, measurements: Measurements) -> dict[str, Any]:
    """What was measured of the chosen variant, and the machine and package versions it was measured with."""
    return {"batch_size": c.batch_size, "p50_ms": c.p50_ms, "throughput_ips": c.throughput_ips,
            "latency_ms": c.bench_row.get("latency_ms"), "device": c.bench_row.get("device"),
            "miou": c.miou, "miou_reference": c.miou_reference, "miou_drop_points": c.miou_drop_points,
            "argmax_agreement": c.agreement, "images": c.images, "accuracy_source": c.accuracy_source,
            "bench_settings": measurements.bench.get("settings"), "environment": measurements.bench.get("environment")}


def measured_threads(measurements: Measurements) -> int | None:
    return (measurements.bench.get("settings") or {}).get("threads")


def manifest_for(run: RunDir, decision: Decision, measurements: Measurements, model_file: str,
                 io: dict) -> dict[str, Any]:
    c = decision.chosen
    variant, target, cfg = candidate_variant(c), TARGETS[c.backend], run.load_config()
    return {
        "format": MANIFEST_FORMAT, "created_by": "segdeploy deploy", "run": str(run.path.resolve()),
        "variant": c.variant, "precision": c.graph or c.precision, "arithmetic": c.precision, "backend": c.backend,
        "batch_size": c.batch_size, "runtime": target.runtime,
        "runtime_settings": target.settings(variant, measured_threads(measurements)),
        "model_file": model_file, "source_file": str(artifact_path(variant, run).relative_to(run.path)),
        "model_sha256": c.artifact_sha256, "checkpoint_sha256": io["sidecar"].get("checkpoint_sha256"),
        "model": {"name": cfg.model.name, "encoder": cfg.model.encoder},
        "input_hw": list(input_hw(cfg.data.size)), "mean": list(pixels.IMAGENET_MEAN),
        "std": list(pixels.IMAGENET_STD), "max_megapixels": cfg.data.max_megapixels,
        "io": {k: v for k, v in io.items() if k not in ("sidecar", "class_names")},
        "classes_file": "classes.json", "measured": measured_block(c, measurements),
        "budget": {"objective": decision.objective, "batch": decision.settings.batch,
                   "max_miou_drop": decision.settings.max_miou_drop, "min_agreement": decision.settings.min_agreement},
    }


def stage_model(run: RunDir, c: Candidate, staging: Path) -> str:
    """Copy the chosen graph (or engine and its build manifest) into the staging folder; returns its name."""
    source = artifact_path(candidate_variant(c), run)
    copy_measured(run, c, staging / source.name)
    if TARGETS[c.backend].runtime is None and source.with_suffix(".json").is_file():  # an engine's manifest
        shutil.copyfile(source.with_suffix(".json"), staging / source.with_suffix(".json").name)
    return source.name


def write_bundle(run: RunDir, decision: Decision, measurements: Measurements, output: Path,
                 triton: str | None = None) -> dict[str, Any]:
    """The bundle of `decision.chosen` in `output` (replacing what was there); `triton`: "chosen" or "all"
    adds a Triton model repository under output/triton/. Returns the manifest."""
    from segdeploy.deploy.readme import bundle_readme
    from segdeploy.deploy.triton import write_repository

    c, output = decision.chosen, Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with FileUnit(run.path if output.resolve().is_relative_to(run.path.resolve()) else output.parent) as unit:
        staging = unit.folder(output)
        model_file = stage_model(run, c, staging)
        io = graph_io(run, candidate_variant(c), staging / model_file)
        manifest = manifest_for(run, decision, measurements, model_file, io)
        fileio.write_json(staging / "classes.json", class_record(run, io["class_names"]))
        if manifest["runtime"] is not None:  # a standalone predictor for graph runtimes
            shutil.copyfile(pixels.__file__, staging / "pixels.py")
            shutil.copyfile(PREDICTOR, staging / "predict.py")
        if triton:
            served = decision.passing() if triton == "all" else [c]
            manifest["triton"] = write_repository(run, decision, served, staging / "triton",
                                                  measured_threads(measurements))
        (staging / "README.md").write_text(bundle_readme(manifest))
        manifest["files"] = {str(p.relative_to(staging)): fileio.sha256_file(p)
                             for p in sorted(staging.rglob("*")) if p.is_file()}
        fileio.write_json(staging / "manifest.json", manifest)
    return manifest
