"""A study file loaded and checked: the grid (grid.py), then everything that can be checked without data."""

from __future__ import annotations

from pathlib import Path

from segdeploy.core.config import Config, read_toml
from segdeploy.core.errors import ConfigError
from segdeploy.study.grid import STAGES, PlannedRun, Study, parse_study
from segdeploy.study.layouts import check_layout


def load_study(path: str | Path, output: str | Path | None = None) -> Study:
    """Parse, expand and check a study file; every problem is a ConfigError naming the file and the key."""
    path = Path(path)
    raw = read_toml(path, "study file")
    try:
        study = parse_study(raw, path, output)
        validate_study(study)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}", hint=exc.hint) from None
    return study


def validate_study(study: Study) -> None:
    """Everything that can be checked without data: names, registries, stages, baselines."""
    seen: set[str] = set()
    config_names = {p.config_name for p in study.runs}
    for planned in study.runs:
        if planned.name in seen:
            raise ConfigError(f"two runs are both named {planned.name!r}: give them distinct names")
        seen.add(planned.name)
        try:
            _validate_run(study, planned, config_names)
        except ConfigError as exc:
            raise ConfigError(f"run {planned.name}: {exc}", hint=exc.hint) from None
    check_layout(study)


def _validate_run(study: Study, planned: PlannedRun, config_names: set[str]) -> None:
    from segdeploy.data.registry import DATASETS
    from segdeploy.models.registry import validate_model_config
    from segdeploy.training.setup import check_train_numbers
    from segdeploy.training.losses import make_loss

    cfg = planned.cfg
    validate_model_config(cfg.model, cfg.data.size)
    make_loss(cfg.train)
    check_train_numbers(cfg)
    DATASETS[cfg.data.dataset]
    for stage in planned.stages:
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    needs_export = [v for v in _stage_variants(cfg) if v.graph]
    if ("parity" in planned.stages or ("bench" in planned.stages and needs_export)) and "export" not in planned.stages:
        raise ConfigError("stages parity/bench on exported backends need the export stage too")
    for name in planned.cross_eval:
        if name not in study.datasets and name not in DATASETS:
            raise ConfigError(f"unknown cross_eval dataset {name!r} (presets: {', '.join(study.datasets) or 'none'})")
    if planned.baseline is not None and planned.baseline not in config_names:
        raise ConfigError(f"baseline {planned.baseline!r} is not a configuration of this study "
                          f"(configurations: {', '.join(sorted(config_names))})")


def _stage_variants(cfg: Config):
    """Every runtime variant the eval, parity and bench stages of a run would use (checks the grammar)."""
    from segdeploy.runtime.variants import expand_backends

    return (expand_backends(cfg.eval.backends, "cpu", cfg.eval.precisions)
            + expand_backends(cfg.parity.backends, "cpu", cfg.parity.precisions)
            + expand_backends(cfg.bench.backends, "cpu", cfg.bench.precisions))


def readiness_warnings(study: Study) -> list[str]:
    """What a real run would still need here: data roots, weight files, network for ImageNet weights."""
    warnings: list[str] = []
    sources = {p.data.get("dataset", p.name): p.source for p in study.datasets.values() if p.source}
    sources.update({p.name: p.source for p in study.datasets.values() if p.source})
    from segdeploy.data.registry import DATASETS

    seen = set()
    for planned in study.runs:
        data = planned.cfg.data
        roots = [(data.dataset, data.dataset, data.root)]
        for name in planned.cross_eval:
            preset = study.datasets.get(name)
            roots.append((name, preset.data.get("dataset", name) if preset else name,
                          preset.data.get("root") if preset else None))
        for name, kind, root in roots:
            if not DATASETS[kind].needs_root or (name, root) in seen:
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


# What `study --dry-run` shows of each run's configuration (label, value of a planned run).
PLAN_SETTINGS = (
    ("dataset", lambda p: p.labels["dataset"]), ("model", lambda p: p.cfg.model.name),
    ("encoder", lambda p: p.cfg.model.encoder), ("decoder width", lambda p: p.cfg.model.decoder_width),
    ("init", lambda p: p.cfg.model.encoder_weights),
    ("OS", lambda p: p.labels["output_stride"]), ("size", lambda p: p.cfg.data.size),
    ("classes", lambda p: p.cfg.data.num_classes), ("augment", lambda p: p.cfg.data.augment),
    ("loss", lambda p: p.cfg.train.loss), ("label smoothing", lambda p: p.cfg.train.label_smoothing),
    ("optimizer", lambda p: p.cfg.train.optimizer), ("lr", lambda p: p.cfg.train.lr),
    ("weight decay", lambda p: p.cfg.train.weight_decay), ("schedule", lambda p: p.cfg.train.scheduler),
    ("batch", lambda p: p.cfg.train.batch_size), ("epochs", lambda p: p.cfg.train.epochs),
    ("seed", lambda p: p.cfg.train.seed),
)


def plan_settings(study: Study) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(settings every run shares, each run's other settings): the hyperparameters a dry run shows."""
    values = [{label: "-" if get(p) is None else str(get(p)) for label, get in PLAN_SETTINGS} for p in study.runs]
    common = {k: v for k, v in values[0].items() if all(row[k] == v for row in values)} if values else {}
    return common, [{k: v for k, v in row.items() if k not in common} for row in values]
