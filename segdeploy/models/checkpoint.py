"""A run's trained model: its checkpoint read through RunDir, checked against the run, built from the registry."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from torch import nn

from segdeploy.core.config import Config, config_from_dict, copy_config
from segdeploy.core.errors import ConfigError, SegdeployError, first_line
from segdeploy.core.rundir import RunDir
from segdeploy.models.registry import build_model, count_parameters, model_identity


def load_model(run: RunDir, which: str = "best") -> tuple[nn.Module, Config, list[str]]:
    """The trained model in eval mode on the CPU, with its config and class names."""
    path = run.require_checkpoint(which)
    ckpt = run.read_checkpoint(which)
    try:
        cfg = config_from_dict(ckpt["config"])
    except ConfigError as exc:
        raise SegdeployError(f"checkpoint {path} holds an unreadable config: {exc}") from None
    class_names = ckpt["class_names"]
    check_checkpoint_fits_run(run, path, cfg, len(class_names))
    model = build_model(_without_download(cfg).model, len(class_names), cfg.data.size)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise SegdeployError(f"checkpoint {path} does not fit model "
                             f"{cfg.model.name}/{cfg.model.encoder} with {len(class_names)} classes: "
                             f"{first_line(exc)}") from None
    return model.eval(), cfg, class_names


def check_checkpoint_fits_run(run: RunDir, path: Path, ckpt_cfg: Config, num_classes: int) -> None:
    """A checkpoint copied in from another run (other model, encoder, class count or size) is an error."""
    run_cfg = run.load_config()
    run_classes = run_cfg.model.num_classes if run_cfg.model.num_classes is not None else num_classes
    mine = model_identity(run_cfg, run_classes)
    theirs = model_identity(ckpt_cfg, num_classes)
    if mine != theirs:
        raise SegdeployError(f"checkpoint {path} is {theirs}, but {run.config_path} is {mine}: "
                             "it belongs to another run (put that run's checkpoint back, or retrain)")


def _without_download(cfg: Config) -> Config:
    """Weights come from the checkpoint: never download or read encoder weights again."""
    cfg = copy_config(cfg)
    cfg.model.encoder_weights = "none"
    return cfg


def checkpoint_parameters(run: RunDir, which: str = "best") -> int | None:
    """Parameters of the trained model, counted from its checkpoint (None before training wrote one)."""
    path = run.checkpoint(which)
    if not path.is_file():
        return None
    return _parameters_of(str(path), path.stat().st_mtime, run)


@lru_cache(maxsize=256)
def _parameters_of(path: str, mtime: float, run: RunDir) -> int:  # keyed on mtime: a rewritten file is re-read
    return count_parameters(run.read_checkpoint(Path(path).stem)["model"])


def weights_mb(run: RunDir, which: str = "best") -> float | None:
    """Size of the model's weights as stored (the checkpoint also holds optimiser state: not deployed)."""
    path = run.checkpoint(which)
    if not path.is_file():
        return None
    return _weight_bytes(str(path), path.stat().st_mtime, run) / 2**20


@lru_cache(maxsize=256)
def _weight_bytes(path: str, mtime: float, run: RunDir) -> int:
    state = run.read_checkpoint(Path(path).stem)["model"]
    return sum(t.numel() * t.element_size() for t in state.values())
