"""A run directory: what `train` creates and every later command reads and adds to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from segdeploy.core.config import Config, config_from_dict, load_config
from segdeploy.core.errors import ConfigError, SegdeployError, StageMissingError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory; a clear error if it is not one."""
        run = cls(Path(path))
        if not run.path.is_dir():
            raise StageMissingError(f"run directory not found: {run.path} (create one with `segdeploy train --output {run.path}`)")
        if not run.config_path.is_file():
            raise StageMissingError(f"{run.path} is not a run directory: no config.toml (run `segdeploy train` first)")
        return run

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, which: str = "best") -> Path:
        return self.checkpoints / f"{which}.pt"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    def epochs_done(self) -> int:
        """Epochs recorded in history.csv (cheap; may lag last.pt by one epoch after a kill)."""
        if not self.history.is_file():
            return 0
        lines = [line for line in self.history.read_text().splitlines()[1:] if line.strip()]
        return len(lines)

    def is_finished(self) -> bool:
        """Training wrote every epoch its config asks for; otherwise `segdeploy train --resume` it."""
        return self.epochs_done() >= self.load_config().train.epochs

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    def onnx_path(self, precision: str = "fp32") -> Path:
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
        name = "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"
        return self.export_dir / name

    def onnx_sidecar(self, precision: str = "fp32") -> Path:
        return self.onnx_path(precision).with_suffix(".json")

    @property
    def engines_dir(self) -> Path:
        return self.path / "engines"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def parity(self) -> Path:
        return self.path / "parity.json"

    @property
    def bench(self) -> Path:
        return self.path / "bench.json"

    def load_config(self) -> Config:
        return load_config(self.config_path)

    def require(self, path: Path, command: str) -> Path:
        """`path` must exist; otherwise say which command makes it."""
        if not path.exists():
            raise StageMissingError(f"{path} not found: run `segdeploy {command} {self.path}` first")
        return path


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise StageMissingError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same user error
        raise SegdeployError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}); "
                             "retrain, or use the other checkpoint (best/last)") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise SegdeployError(f"{path} is not a segdeploy checkpoint")
    return ckpt


def load_model(run: RunDir, which: str = "best") -> tuple[nn.Module, Config, list[str]]:
    """The trained model in eval mode on the CPU, with its config and class names."""
    from segdeploy.models.registry import build_model

    ckpt = load_checkpoint(run.require(run.checkpoint(which), "train"))
    try:
        cfg = config_from_dict(ckpt["config"])
    except ConfigError as exc:
        raise SegdeployError(f"checkpoint {run.checkpoint(which)} holds an unreadable config: {exc}") from None
    class_names = ckpt["class_names"]
    check_checkpoint_fits_run(run, run.checkpoint(which), cfg, len(class_names))
    model = build_model(_without_download(cfg).model, len(class_names), cfg.data.size)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SegdeployError(f"checkpoint {run.checkpoint(which)} does not fit model "
                             f"{cfg.model.name}/{cfg.model.encoder} with {len(class_names)} classes: {first}") from None
    return model.eval(), cfg, class_names


def _model_identity(cfg: Config, num_classes: int | None) -> str:
    stride = f" OS {cfg.model.output_stride}" if cfg.model.name.startswith("deeplab") else ""
    return f"{cfg.model.name}/{cfg.model.encoder}{stride} with {num_classes} classes at {cfg.data.size}px"


def check_checkpoint_fits_run(run: RunDir, path: Path, ckpt_cfg: Config, num_classes: int) -> None:
    """A checkpoint copied in from another run (other model, encoder, class count or size) is an error."""
    run_cfg = run.load_config()
    run_classes = run_cfg.model.num_classes if run_cfg.model.num_classes is not None else num_classes
    mine = _model_identity(run_cfg, run_classes)
    theirs = _model_identity(ckpt_cfg, num_classes)
    if mine != theirs:
        raise SegdeployError(f"checkpoint {path} is {theirs}, but {run.config_path} is {mine}: "
                             "it belongs to another run (put that run's checkpoint back, or retrain)")


def _without_download(cfg: Config) -> Config:
    """Weights come from the checkpoint: never download or read encoder weights again."""
    from segdeploy.core.config import copy_config

    cfg = copy_config(cfg)
    cfg.model.encoder_weights = "none"
    return cfg
