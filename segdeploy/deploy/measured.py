"""The measurements `segdeploy deploy` decides on, read through RunDir and checked before any decision:
bench.json and parity.json must exist, come from this machine (CPU, its flags, GPU, runtime versions) and
describe the files that are here now (the sha256 of every graph, engine and checkpoint they measured).
Otherwise the error names the commands that measure them again."""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from segdeploy.core import fileio
from segdeploy.core.env import machine_differences
from segdeploy.core.errors import ConfigError, SegdeployError, StageMissingError
from segdeploy.core.rundir import RunDir
from segdeploy.deploy.pick import Candidate
from segdeploy.runtime.variants import Variant, artifact_path, parse_variant

class StaleMeasurements(StageMissingError):
    """bench.json / parity.json are missing, another machine's, or older than the files here."""


@dataclass
class Measurements:
    bench: dict
    parity: dict
    environment: dict  # this machine, now


def stale_rows(run: RunDir, rows: list[dict], what: str) -> list[str]:
    """Rows that measured a file other than the one here now (re-exported graph, retrained checkpoint)."""
    found: dict[str, str] = {}
    for row in rows:
        if row.get("status") != "ok" or row.get("variant") is None:
            continue
        try:
            path = artifact_path(parse_variant(row["variant"], row.get("graph") or row["precision"]), run)
        except ConfigError:  # a backend this installation does not know (a plugin's)
            continue
        label = f"{row['variant']}/{row['precision']}"
        recorded = row.get("artifact_sha256")
        if recorded is None:
            found[label] = f"{label} ({what} does not record which file it measured)"
        elif not path.is_file():
            found[label] = f"{label} ({path.relative_to(run.path) if path.is_relative_to(run.path) else path} is gone)"
        elif fileio.sha256_cached(path) != recorded:
            found[label] = f"{label} ({path.name} changed since {what} measured it)"
        elif path.suffix == ".onnx" and run.checkpoint_changed(run.read_json(path.with_suffix(".json")) or {}):
            found[label] = f"{label} ({path.name} was exported from another checkpoints/best.pt: trained again since)"
    return list(found.values())


def measure_commands(run: RunDir, bench: dict | None) -> str:
    """The parity and bench commands that measure the same variants again, as they can be typed."""
    settings = (bench or {}).get("settings") or {}
    cfg = run.load_config().bench
    backends = settings.get("backends") or cfg.backends
    precisions = settings.get("precisions") or cfg.precisions
    sizes = settings.get("batch_sizes") or cfg.batch_sizes
    sizes = sizes if isinstance(sizes, str) else ",".join(map(str, sizes))
    common = ["--backends", ",".join(backends), "--precision", ",".join(precisions)]
    parity = shlex.join(["segdeploy", "parity", str(run.path), *common])
    bench_cmd = shlex.join(["segdeploy", "bench", str(run.path), *common, "--batch-sizes", sizes])
    return f"`{parity}` then `{bench_cmd}`"


def read_measurements(run: RunDir, environment: dict) -> Measurements:
    """bench.json and parity.json of `run`, refused (with the commands to run) when missing, measured on
    another machine, or stale."""
    bench, parity = run.read_bench(), run.read_parity()
    commands = measure_commands(run, bench)
    missing = [p.name for p, data in ((run.parity, parity), (run.bench, bench)) if not isinstance(data, dict)]
    if missing:
        raise StaleMeasurements(f"{' and '.join(missing)} not found in {run.path}: deploy picks from measured "
                                "variants only", hint=f"measure them: {commands}")
    for name, data in (("bench.json", bench), ("parity.json", parity)):
        if name == "parity.json" and "environment" not in data:
            continue  # parity.json written before it recorded the machine: its files' hashes still count
        differences = machine_differences(data.get("environment"), environment)
        if differences:
            raise StaleMeasurements(f"{name} was measured on another machine or software ({'; '.join(differences)})",
                                    hint=f"measure here: {commands}")
    stale = stale_rows(run, bench.get("results", []), "bench.json") + \
        stale_rows(run, bench.get("accuracy") or [], "bench.json") + stale_rows(run, parity.get("results", []), "parity.json")
    if stale:
        raise StaleMeasurements(f"the measurements are older than the files here: {'; '.join(dict.fromkeys(stale))}",
                                hint=f"measure again: {commands}")
    return Measurements(bench, parity, environment)


def candidate_variant(c: Candidate) -> Variant:
    return parse_variant(c.variant, c.graph or c.precision)


def copy_measured(run: RunDir, c: Candidate, target: Path) -> Path:
    """Copy the file `c` ran to `target`; its copy must be the file bench and parity measured."""
    source = artifact_path(candidate_variant(c), run)
    shutil.copyfile(source, target)
    if fileio.sha256_file(target) != c.artifact_sha256:
        raise SegdeployError(f"{source} changed while it was copied, or is not the file that was measured",
                             hint=f"measure it again, then deploy: `segdeploy deploy {run.path}`")
    return target
