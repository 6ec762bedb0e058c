"""`segdeploy study STUDY.toml`: a grid of runs from one file, resumable, summarised like the studies.

A study file holds
  [study]            name, description, stages after training, cross-dataset evaluation, baseline,
                     layout (seed_tables.md in a seed study's table layout), published (the seed's
                     numbers, a TOML file beside the study file), per_class_delta (two configurations)
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
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segdeploy.core.config import SECTIONS, Config, config_from_dict, config_to_dict
from segdeploy.core.errors import ConfigError
from segdeploy.core.names import check_name
from segdeploy.core.rundir import RunDir
from segdeploy.core.size import size_label

STAGES = ("eval", "export", "parity", "bench")
# short keys of [axes] and [[runs]] -> dotted config keys ("dataset" is resolved through presets)
SHORT_KEYS = {
    "model": "model.name", "encoder": "model.encoder", "loss": "train.loss",
    "output_stride": "model.output_stride", "size": "data.size",
    "encoder_weights": "model.encoder_weights", "seed": "train.seed", "dataset": "data.dataset",
    "decoder_width": "model.decoder_width",
}
STUDY_KEYS = {"name", "description", "stages", "cross_eval", "device", "baseline", "notes", "layout", "published",
              "per_class_delta"}
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
    device: str = "auto"
    layout: str | None = None  # a table layout of study/layouts (LAYOUTS) (seed_tables.md)
    published: Path | None = None  # the seed's published numbers (resolved against the study file's folder)
    per_class_delta: list[str] = field(default_factory=list)  # two configurations compared class by class

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
        return f"{size_label(value)}px"
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
        from segdeploy.data.registry import DATASETS

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


def parse_study(raw: dict, path: Path, output: str | Path | None) -> Study:
    """The grid of a study file (its dict from TOML): presets, defaults, axes x runs -> planned runs."""
    meta = _check_top_level(raw, path)
    datasets = _dataset_presets(raw.get("datasets", {}))
    base = config_from_dict({k: v for k, v in raw.items() if k in SECTIONS})  # checks the default sections
    axes = raw.get("axes", {})
    if not isinstance(axes, dict):
        raise ConfigError("[axes] must be a table of lists")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"axes.{key} must be a non-empty list, got {values!r}")
    run_tables = raw.get("runs", [{}])
    if not isinstance(run_tables, list) or not run_tables:
        raise ConfigError("[[runs]] must be a list of tables")
    planned = [run for index, table in enumerate(run_tables)
               for run in _expand_run_table(index, table, axes, base, datasets, meta)]
    published = meta.get("published")
    return Study(name=meta.get("name", path.stem), path=path, output=Path(output) if output else
                 path.parent / meta.get("name", path.stem), description=str(meta.get("description", "")),
                 runs=planned, datasets=datasets, device=meta.get("device", "auto"), layout=meta.get("layout"),
                 published=path.parent / _expand(published) if published else None,
                 per_class_delta=_string_list(meta.get("per_class_delta", []), "study.per_class_delta"))


def _check_top_level(raw: dict, path: Path) -> dict:
    known_top = {"study", "datasets", "axes", "runs", *SECTIONS}
    for key in raw:
        if key not in known_top:
            raise ConfigError(f"unknown top-level key or section {key!r} (known: {', '.join(sorted(known_top))})")
    meta = raw.get("study", {})
    for key in meta:
        if key not in STUDY_KEYS:
            raise ConfigError(f"unknown key study.{key} (known: {', '.join(sorted(STUDY_KEYS))})")
    check_name(meta.get("name", path.stem), "study.name" if "name" in meta else "the study file's name (study.name)")
    return meta


def _dataset_presets(tables: dict) -> dict[str, DatasetPreset]:
    datasets: dict[str, DatasetPreset] = {}
    for preset_name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[datasets.{preset_name}] must be a table")
        check_name(preset_name, "dataset preset")
        data = {k: _expand(v) for k, v in table.items() if k not in DATASET_KEYS}
        data.setdefault("dataset", preset_name)
        config_from_dict({"data": data})  # type-checks the keys
        datasets[preset_name] = DatasetPreset(preset_name, data, table.get("source"))
    return datasets


def _run_table_settings(table: dict, axes: dict, datasets: dict[str, DatasetPreset], where: str
                        ) -> tuple[dict, dict[str, Any]]:
    """The config dict and summary labels one [[runs]] table sets itself (before the axes)."""
    run_raw: dict = {}
    labels: dict[str, Any] = {}
    for key, value in table.items():
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
    return run_raw, labels


def _expand_run_table(index: int, table: dict, axes: dict, base: Config, datasets: dict[str, DatasetPreset],
                      meta: dict) -> list[PlannedRun]:
    """One planned run per combination of the axes' values."""
    where = f"runs[{index}]" + (f" ({table['name']})" if "name" in table else "")
    run_raw, labels = _run_table_settings(table, axes, datasets, where)
    stages = _string_list(table.get("stages", meta.get("stages", [])), f"{where}.stages")
    cross = _string_list(table.get("cross_eval", meta.get("cross_eval", [])), f"{where}.cross_eval")
    planned = []
    for combo in itertools.product(*axes.values()):
        combo_raw, dataset_label = copy.deepcopy(run_raw), labels.get("dataset")
        for key, value in zip(axes, combo):
            _apply_short(combo_raw, key, value, datasets, f"axes.{key}")
            dataset_label = value if key == "dataset" else dataset_label
        cfg = config_from_dict(_merge(config_to_dict_compact(base), combo_raw))
        config_name, run_name = _names(table.get("name"), cfg, axes, combo)
        check_name(run_name, f"{where}: run name")
        cfg.name = run_name
        planned.append(PlannedRun(run_name, config_name, cfg, table.get("baseline", meta.get("baseline")), cross,
                                  stages, summary_labels(cfg, dataset_label)))
    return planned


def _names(name: str | None, cfg: Config, axes: dict, combo: tuple) -> tuple[str, str]:
    """(configuration name, run directory name): the run's name or model-encoder-loss, then the axes that
    vary; the seed only in the run directory's name."""
    seeds = [_tag(k, v) for k, v in zip(axes, combo) if k in ("seed", "train.seed")]
    named = ("model", "model.name", "encoder", "model.encoder", "loss", "train.loss")
    varying = [(k, v) for k, v in zip(axes, combo) if len(axes[k]) > 1 and k not in ("seed", "train.seed")]
    if name:
        config_name = "-".join([name, *(_tag(k, v) for k, v in varying)])
    else:
        config_name = "-".join([_tag("model", cfg.model.name), _tag("encoder", cfg.model.encoder), cfg.train.loss,
                                *(_tag(k, v) for k, v in varying if k not in named)])
    return config_name, "-".join([config_name, *seeds])


def summary_labels(cfg: Config, dataset: str | None = None) -> dict[str, Any]:
    from segdeploy.models.registry import output_stride

    return {"model": cfg.model.name, "encoder": cfg.model.encoder, "loss": cfg.train.loss,
            "output_stride": output_stride(cfg.model), "size": cfg.data.size,
            "encoder_weights": cfg.model.encoder_weights, "dataset": dataset or cfg.data.dataset,
            "seed": cfg.train.seed}


def config_to_dict_compact(cfg: Config) -> dict:
    return {k: v for k, v in config_to_dict(cfg).items() if k != "name"}


def config_difference(run: RunDir, planned: PlannedRun) -> str | None:
    """'train.lr = 0.001, the study now says 0.002' when the run directory was made from another
    configuration than the study file now gives it (finished or not); None when they agree or it has none."""
    if not run.config_path.is_file():
        return None
    existing = config_to_dict(run.load_config())
    for section, values in config_to_dict_compact(planned.cfg).items():
        for key, value in values.items():
            if section == "model" and key == "num_classes" and value is None:
                continue
            if existing[section].get(key) != value:
                return f"{section}.{key} = {existing[section].get(key)!r}, but the study now says {value!r}"
    return None
