"""`segdeploy study STUDY.toml`: a grid of runs from one file, resumable, summarised like the studies.

A study file holds
  [study]            name, description, stages after training, cross-dataset evaluation, baseline
  [datasets.NAME]    dataset presets (DataConfig keys plus `source`, where the data is obtained)
  [model] [data] [train] [export] [bench]
                     defaults for every run, the same sections as a config file
  [axes]             a product of values: model, encoder, loss, output_stride, size,
                     encoder_weights, seed, dataset (or any dotted config key)
  [[runs]]           named configurations: the same short keys, config sections as sub-tables,
                     `baseline` (the configuration this row is an ablation of), `cross_eval`
Every configuration x axis combination is one run directory under <output>/runs/<run-name>/,
made by the ordinary `train` function. What is done is read from disk, so a rerun skips finished
runs and stages and only repeats what is missing.
"""

from __future__ import annotations

import copy
import csv
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segdeploy.core import fileio
from segdeploy.core.config import Config, config_from_dict, config_to_dict, read_toml
from segdeploy.core.errors import ConfigError, SegdeployError
from segdeploy.core.progress import console
from segdeploy.core.rundir import RunDir

STAGES = ("eval", "export", "parity", "bench")
# short keys of [axes] and [[runs]] -> dotted config keys ("dataset" is resolved through presets)
SHORT_KEYS = {
    "model": "model.name", "encoder": "model.encoder", "loss": "train.loss",
    "output_stride": "model.output_stride", "size": "data.size",
    "encoder_weights": "model.encoder_weights", "seed": "train.seed", "dataset": "data.dataset",
}
STUDY_KEYS = {"name", "description", "stages", "cross_eval", "parity_backends", "parity_precisions",
              "parity_max_images", "eval_backend", "device", "baseline", "notes"}
RUN_KEYS = {"name", "baseline", "cross_eval", "stages"}
DATASET_KEYS = {"source", "notes"}  # besides DataConfig's own keys


@dataclass
class DatasetPreset:
    name: str
    data: dict[str, Any]  # DataConfig keys
    source: str | None = None


@dataclass
class PlannedRun:
    name: str  # run directory name (includes the seed when seeds vary)
    config_name: str  # the configuration, seed left out: one summary row
    cfg: Config
    baseline: str | None
    cross_eval: list[str]
    stages: list[str]
    labels: dict[str, Any]  # model, encoder, loss, ... as shown in the summary


@dataclass
class Study:
    name: str
    path: Path
    output: Path
    description: str
    runs: list[PlannedRun]
    datasets: dict[str, DatasetPreset]
    parity_backends: list[str] = field(default_factory=lambda: ["onnxruntime"])
    parity_precisions: list[str] = field(default_factory=lambda: ["fp32"])
    parity_max_images: int | None = None
    eval_backend: str = "torch"
    device: str = "auto"

    @property
    def runs_dir(self) -> Path:
        return self.output / "runs"

    def run_dir(self, planned: PlannedRun) -> RunDir:
        return RunDir(self.runs_dir / planned.name)


# --------------------------------------------------------------------------- parsing


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.expanduser(os.path.expandvars(value))
    return value


def _tag(key: str, value: Any) -> str:
    if key == "output_stride" or key == "model.output_stride":
        return f"os{value}"
    if key in ("size", "data.size"):
        return f"{value}px"
    if key in ("seed", "train.seed"):
        return f"s{value}"
    if key in ("encoder_weights", "model.encoder_weights"):
        return {"none": "random", "imagenet": "imagenet"}.get(str(value), f"w-{Path(str(value)).stem}")
    if key in ("encoder", "model.encoder"):
        return str(value).replace("resnet", "r")
    return str(value).replace("/", "-").replace(" ", "-")


def _set_dotted(raw: dict, dotted: str, value: Any, where: str) -> None:
    if "." not in dotted:
        raise ConfigError(f"{where}: unknown key {dotted!r} (short keys: {', '.join(SHORT_KEYS)}; "
                          "or a dotted config key such as train.lr)")
    section, key = dotted.split(".", 1)
    raw.setdefault(section, {})[key] = value


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _apply_short(raw: dict, key: str, value: Any, datasets: dict[str, DatasetPreset], where: str) -> None:
    """Put one short or dotted key of a run/axis into the nested config dict `raw`."""
    if key == "dataset":
        if value in datasets:
            raw["data"] = _merge(raw.get("data", {}), datasets[value].data)
            return
        from segdeploy.data.dataset import DATASETS

        if value not in DATASETS:
            raise ConfigError(f"{where}: unknown dataset {value!r} (presets: {', '.join(datasets) or 'none'}; "
                              f"registry: {', '.join(DATASETS)})")
    _set_dotted(raw, SHORT_KEYS.get(key, key), _expand(value), where)


def _string_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    return list(value)


def load_study(path: str | Path, output: str | Path | None = None) -> Study:
    """Parse and expand a study file; every problem is a ConfigError naming the file and the key."""
    path = Path(path)
    raw = read_toml(path, "study file")
    try:
        return _build_study(raw, path, output)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}", hint=exc.hint) from None


def _build_study(raw: dict, path: Path, output: str | Path | None) -> Study:
    from segdeploy.core.config import SECTIONS

    known_top = {"study", "datasets", "axes", "runs", *SECTIONS}
    for key in raw:
        if key not in known_top:
            raise ConfigError(f"unknown top-level key or section {key!r} (known: {', '.join(sorted(known_top))})")
    meta = raw.get("study", {})
    for key in meta:
        if key not in STUDY_KEYS:
            raise ConfigError(f"unknown key study.{key} (known: {', '.join(sorted(STUDY_KEYS))})")
    name = meta.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"study.name must be a non-empty name without '/', got {name!r}")

    datasets: dict[str, DatasetPreset] = {}
    for preset_name, table in raw.get("datasets", {}).items():
        if not isinstance(table, dict):
            raise ConfigError(f"[datasets.{preset_name}] must be a table")
        data = {k: _expand(v) for k, v in table.items() if k not in DATASET_KEYS}
        data.setdefault("dataset", preset_name)
        config_from_dict({"data": data})  # type-checks the keys
        datasets[preset_name] = DatasetPreset(preset_name, data, table.get("source"))

    defaults = {k: v for k, v in raw.items() if k in SECTIONS}
    base = config_from_dict(defaults)  # checks the default sections
    study_stages = _string_list(meta.get("stages", []), "study.stages")
    study_cross = _string_list(meta.get("cross_eval", []), "study.cross_eval")

    axes = raw.get("axes", {})
    if not isinstance(axes, dict):
        raise ConfigError("[axes] must be a table of lists")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"axes.{key} must be a non-empty list, got {values!r}")
    run_tables = raw.get("runs", [{}])
    if not isinstance(run_tables, list) or not run_tables:
        raise ConfigError("[[runs]] must be a list of tables")

    planned: list[PlannedRun] = []
    axis_keys = list(axes)
    for index, run_table in enumerate(run_tables):
        where = f"runs[{index}]" + (f" ({run_table['name']})" if "name" in run_table else "")
        run_raw: dict = {}
        labels: dict[str, Any] = {}
        for key, value in run_table.items():
            if key in RUN_KEYS:
                continue
            if key in SECTIONS and isinstance(value, dict):  # `model = "unet"` is the short key
                run_raw = _merge(run_raw, {key: {k: _expand(v) for k, v in value.items()}})
            elif key in SHORT_KEYS or "." in key:
                if key in axes:
                    raise ConfigError(f"{where}: {key!r} is set both by the run and by [axes]")
                _apply_short(run_raw, key, value, datasets, where)
                labels[key] = value
            else:
                raise ConfigError(f"{where}: unknown key {key!r} (run keys: {', '.join(sorted(RUN_KEYS))}, "
                                  f"short keys: {', '.join(SHORT_KEYS)}, or a config section)")
        for combo in itertools.product(*(axes[k] for k in axis_keys)):
            combo_raw = copy.deepcopy(run_raw)
            combo_labels = dict(labels)
            tags, seed_tag = [], None
            for key, value in zip(axis_keys, combo):
                _apply_short(combo_raw, key, value, datasets, f"axes.{key}")
                combo_labels[key] = value
                if key in ("seed", "train.seed"):
                    seed_tag = _tag(key, value)
                elif len(axes[key]) > 1:
                    tags.append(_tag(key, value))
            cfg = config_from_dict(_merge(config_to_dict_compact(base), combo_raw))
            if run_table.get("name"):
                config_name = "-".join([run_table["name"], *tags])
            else:  # model-encoder-loss, then the other axes that vary
                named = ("model", "model.name", "encoder", "model.encoder", "loss", "train.loss")
                config_name = "-".join([_tag("model", cfg.model.name), _tag("encoder", cfg.model.encoder),
                                        cfg.train.loss, *(_tag(k, v) for k, v in zip(axis_keys, combo)
                                                          if len(axes[k]) > 1 and k not in named
                                                          and k not in ("seed", "train.seed"))])
            run_name = f"{config_name}-{seed_tag}" if seed_tag else config_name
            cfg.name = run_name
            stages = _string_list(run_table.get("stages", study_stages), f"{where}.stages")
            cross = _string_list(run_table.get("cross_eval", study_cross), f"{where}.cross_eval")
            full_labels = {"model": cfg.model.name, "encoder": cfg.model.encoder, "loss": cfg.train.loss,
                           "output_stride": cfg.model.output_stride if cfg.model.name.startswith("deeplab") else None,
                           "size": cfg.data.size, "encoder_weights": cfg.model.encoder_weights,
                           "dataset": combo_labels.get("dataset", cfg.data.dataset), "seed": cfg.train.seed}
            planned.append(PlannedRun(run_name, config_name, cfg, run_table.get("baseline", meta.get("baseline")),
                                      cross, stages, full_labels))

    study = Study(
        name=name, path=path, output=Path(output) if output else path.parent / name,
        description=str(meta.get("description", "")), runs=planned, datasets=datasets,
        parity_backends=_string_list(meta.get("parity_backends", ["onnxruntime"]), "study.parity_backends"),
        parity_precisions=_string_list(meta.get("parity_precisions", ["fp32"]), "study.parity_precisions"),
        parity_max_images=meta.get("parity_max_images"), eval_backend=meta.get("eval_backend", "torch"),
        device=meta.get("device", "auto"),
    )
    validate_study(study)
    return study


def config_to_dict_compact(cfg: Config) -> dict:
    return {k: v for k, v in config_to_dict(cfg).items() if k != "name"}


# --------------------------------------------------------------------------- validation


def validate_study(study: Study) -> None:
    """Everything that can be checked without data: names, registries, stages, baselines."""
    from segdeploy.data.dataset import DATASETS
    from segdeploy.training.losses import make_loss
    from segdeploy.models.registry import validate_model_config
    from segdeploy.runtime.base import BACKENDS

    seen: dict[str, PlannedRun] = {}
    config_names = {p.config_name for p in study.runs}
    for planned in study.runs:
        where = f"run {planned.name}"
        if planned.name in seen:
            raise ConfigError(f"two runs are both named {planned.name!r}: give them distinct names")
        seen[planned.name] = planned
        cfg = planned.cfg
        try:
            validate_model_config(cfg.model, cfg.data.size)
            make_loss(cfg.train)
            if cfg.train.optimizer not in ("adamw", "adam"):
                raise ConfigError(f"unknown optimizer {cfg.train.optimizer!r} (known: adamw, adam)")
            if cfg.train.scheduler not in ("none", "cosine"):
                raise ConfigError(f"unknown scheduler {cfg.train.scheduler!r} (known: none, cosine)")
            if cfg.data.dataset not in DATASETS:
                raise ConfigError(f"unknown dataset {cfg.data.dataset!r} (known: {', '.join(DATASETS)})")
            for stage in planned.stages:
                if stage not in STAGES:
                    raise ConfigError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
            needs_export = [b for b in study.parity_backends + cfg.bench.backends if b != "torch"]
            if ("parity" in planned.stages or ("bench" in planned.stages and needs_export)) \
                    and "export" not in planned.stages:
                raise ConfigError("stages parity/bench on exported backends need the export stage too")
            for backend in set(study.parity_backends + cfg.bench.backends + [study.eval_backend]):
                if backend not in BACKENDS:
                    raise ConfigError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
            for name in planned.cross_eval:
                if name not in study.datasets and name not in DATASETS:
                    raise ConfigError(f"unknown cross_eval dataset {name!r} "
                                      f"(presets: {', '.join(study.datasets) or 'none'})")
            if planned.baseline is not None and planned.baseline not in config_names:
                raise ConfigError(f"baseline {planned.baseline!r} is not a configuration of this study "
                                  f"(configurations: {', '.join(sorted(config_names))})")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}", hint=exc.hint) from None


def readiness_warnings(study: Study) -> list[str]:
    """What a real run would still need here: data roots, weight files, network for ImageNet weights."""
    warnings: list[str] = []
    sources = {p.data.get("dataset", p.name): p.source for p in study.datasets.values() if p.source}
    sources.update({p.name: p.source for p in study.datasets.values() if p.source})
    seen = set()
    for planned in study.runs:
        data = planned.cfg.data
        roots = [(data.dataset, data.root)]
        for name in planned.cross_eval:
            preset = study.datasets.get(name)
            roots.append((name, preset.data.get("root") if preset else None))
        for name, root in roots:
            if name == "synthetic" or (name, root) in seen:
                continue
            seen.add((name, root))
            if not root or not Path(root).is_dir():
                where = f" (obtain it from {sources[name]})" if name in sources else ""
                warnings.append(f"dataset {name}: data root {root or '(not set)'} not found{where}")
        weights = planned.cfg.model.encoder_weights
        if weights == "imagenet" and ("imagenet", planned.cfg.model.encoder) not in seen:
            seen.add(("imagenet", planned.cfg.model.encoder))
            warnings.append(f"{planned.cfg.model.encoder}: ImageNet weights are downloaded on first use "
                            "(needs network access or a filled torch hub cache)")
        elif weights not in ("none", "imagenet") and not Path(weights).exists() and weights not in seen:
            seen.add(weights)
            warnings.append(f"encoder weights {weights} not found locally")
    return warnings


# --------------------------------------------------------------------------- state on disk


def _history_epochs(run: RunDir) -> int:
    if not run.history.is_file():
        return 0
    with open(run.history, newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def cross_metrics_path(run: RunDir, dataset: str) -> Path:
    return run.path / f"metrics.cross-{dataset}.json"


def stage_status(study: Study, planned: PlannedRun) -> dict[str, bool]:
    """Which steps of this run are complete, judged only from the files in its run directory."""
    run = study.run_dir(planned)
    status = {"train": (run.checkpoint("last").is_file() and run.checkpoint("best").is_file()
                        and _history_epochs(run) >= planned.cfg.train.epochs)}
    for stage in planned.stages:
        if stage == "eval":
            status["eval"] = run.metrics.is_file()
            for name in planned.cross_eval:
                status[f"cross:{name}"] = cross_metrics_path(run, name).is_file()
        elif stage == "export":
            status["export"] = run.onnx_path("fp32").is_file() and run.onnx_sidecar("fp32").is_file()
        elif stage == "parity":
            status["parity"] = run.parity.is_file()
        elif stage == "bench":
            status["bench"] = run.bench.is_file()
    return status


def check_same_config(run: RunDir, planned: PlannedRun) -> None:
    """A run directory made from another configuration is never silently reused or replaced."""
    if not run.config_path.is_file():
        return
    existing = config_to_dict(run.load_config())
    wanted = config_to_dict(planned.cfg)
    for section, values in wanted.items():
        if section == "name":
            continue
        for key, value in values.items():
            if section == "model" and key == "num_classes" and value is None:
                continue
            if existing[section].get(key) != value:
                raise SegdeployError(
                    f"{run.path} was trained with {section}.{key} = {existing[section].get(key)!r}, but the study "
                    f"now says {value!r}: delete that run directory or give the run another name")


# --------------------------------------------------------------------------- running


def train_or_continue(planned: PlannedRun, run: RunDir, started: bool) -> None:
    """Train a run; an unfinished one (`started`) continues from its last checkpoint, or starts again
    when it was killed before writing one."""
    from segdeploy.training.loop import train

    if started and run.checkpoint("last").is_file():
        train(planned.cfg, run.path, resume=True)
    else:
        train(planned.cfg, run.path, overwrite=started)


def _dataset_config(study: Study, name: str, size: int):
    preset = study.datasets.get(name)
    data = config_from_dict({"data": preset.data if preset else {"dataset": name}}).data
    data.size = size
    return data


def run_stages(study: Study, planned: PlannedRun, status: dict[str, bool]) -> None:
    from segdeploy.core.env import resolve_device

    run = study.run_dir(planned)
    device = resolve_device(study.device)
    cfg = planned.cfg
    if "eval" in planned.stages:
        from segdeploy.evaluation.evaluate import evaluate

        for name in planned.cross_eval:
            if not status.get(f"cross:{name}"):
                console.print(f"  cross-dataset eval on {name}")
                # evaluate() writes RUN/metrics.json; keep a copy per dataset, the in-domain eval runs last
                result = evaluate(run, study.eval_backend, "fp32", "val",
                                  data=_dataset_config(study, name, cfg.data.size), device=device)
                fileio.write_json(cross_metrics_path(run, name), {**result, "cross_dataset": name})
                status["eval"] = False
        if not status.get("eval"):
            console.print("  eval")
            evaluate(run, study.eval_backend, "fp32", "val", device=device)
    if "export" in planned.stages and not status.get("export"):
        from segdeploy.export.onnx import export_run

        console.print("  export")
        export_run(run)
    if "parity" in planned.stages and not status.get("parity"):
        from segdeploy.evaluation.parity import run_parity

        console.print(f"  parity ({', '.join(study.parity_backends)})")
        run_parity(run, study.parity_backends, study.parity_precisions, max_images=study.parity_max_images,
                   device=device, threads=cfg.bench.threads)
    if "bench" in planned.stages and not status.get("bench"):
        from segdeploy.bench.sweep import run_bench

        console.print(f"  bench ({', '.join(cfg.bench.backends)})")
        run_bench(run, cfg.bench.backends, cfg.bench.batch_sizes, warmup=cfg.bench.warmup,
                  iters=cfg.bench.iters, device=resolve_device(cfg.bench.device), threads=cfg.bench.threads)


def plan_rows(study: Study) -> list[dict]:
    rows = []
    for planned in study.runs:
        status = stage_status(study, planned)
        started = study.run_dir(planned).config_path.is_file()
        state = "done" if all(status.values()) else ("partial" if started else "todo")
        missing = [k for k, v in status.items() if not v]
        rows.append({"run": planned.name, "config": planned.config_name, "state": state, "missing": missing,
                     "baseline": planned.baseline})
    return rows


def run_study(study: Study, only: list[str] | None = None) -> Path:
    """Run every unfinished run and stage; write the summary after each run and on Ctrl-C."""
    from segdeploy.study.summary import write_summary

    selected = [p for p in study.runs if not only or p.name in only or p.config_name in only]
    if only and not selected:
        raise ConfigError(f"--only {', '.join(only)} matches no run (runs: {', '.join(p.name for p in study.runs)})")
    study.runs_dir.mkdir(parents=True, exist_ok=True)
    try:
        for number, planned in enumerate(selected, 1):
            run = study.run_dir(planned)
            status = stage_status(study, planned)
            if all(status.values()):
                console.print(f"[dim]study {study.name} [{number}/{len(selected)}] {planned.name}: done, skipped[/]")
                continue
            console.print(f"[bold]study {study.name} [{number}/{len(selected)}] {planned.name}[/]")
            check_same_config(run, planned)
            if not status["train"]:
                started = run.config_path.is_file()
                train_or_continue(planned, run, started)
                status = stage_status(study, planned)
            run_stages(study, planned, status)
            write_summary(study)
    except KeyboardInterrupt:
        write_summary(study)
        raise
    except SegdeployError as exc:  # name the run; keep the error's class and exit code
        write_summary(study)
        exc.args = (f"study {study.name}, run {planned.name}: {exc}",)
        raise
    return write_summary(study)
