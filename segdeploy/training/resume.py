"""Checkpoints and history of a training run, and everything a resumed run restores from last.pt."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import numpy as np
import torch

from segdeploy.core import fileio
from segdeploy.core.config import Config, config_to_dict
from segdeploy.core.errors import SegdeployError, first_line
from segdeploy.core.rundir import RunDir

HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_miou", "val_mean_dice",
                  "val_pixel_accuracy", "lr", "seconds", "peak_gpu_memory_mb", "empty_batches", "planned_epochs"]


def save_checkpoint(path: Path, state: dict) -> None:
    with fileio.atomic_path(path) as tmp:
        torch.save(state, tmp)


def nonfinite_tensor(model: torch.nn.Module) -> str | None:
    """The first weight or buffer holding a NaN or infinity, by name."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


def last_good_checkpoint(run: RunDir) -> str:
    """What a diverged run leaves to resume from, for its error message."""
    path = run.checkpoint("last")
    if path.exists():
        return f"last good checkpoint kept: {path}"
    return "no checkpoint was written yet (it diverged in the first epoch)"


def write_history(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_text(path, buffer.getvalue())


RESUME_MAY_CHANGE = ("device", "threads")
NOT_COMPUTED = ("keep_resume_state",)  # what is kept after training, not what it computes


def _resume_comparable(raw: dict) -> dict:
    """The sections that decide what training computes (not eval/parity/bench settings)."""
    raw = {section: dict(raw.get(section, {})) for section in ("model", "data", "train")}
    for key in RESUME_MAY_CHANGE + NOT_COMPUTED:
        raw.get("train", {}).pop(key, None)
    return raw


def load_resume_state(run: RunDir, cfg: Config, model, optimizer, scheduler, scaler, generator: torch.Generator,
                      ema=None) -> tuple[list[dict], float, int, dict | None]:
    """Restore everything the next epoch depends on from checkpoints/last.pt.

    Returns (history rows so far, best val mIoU, first epoch to run, the time budget's state or None).
    Without last.pt (killed during the first epoch) the run starts again at epoch 1, which is what an
    uninterrupted run did.
    """
    fileio.remove_stale_temps(run.path)
    fileio.remove_stale_temps(run.checkpoints)
    path = run.checkpoint("last")
    if not path.exists():
        return [], -1.0, 1, None
    ckpt = run.read_checkpoint("last")
    if "config" not in ckpt:
        raise SegdeployError(f"{path} cannot be resumed: it lacks config (written by an older segdeploy?)")
    if _resume_comparable(ckpt["config"]) != _resume_comparable(config_to_dict(cfg)):
        raise SegdeployError(f"{run.config_path} differs from the config stored in {path}: "
                             "restore config.toml, or start a new run")
    history = ckpt.get("history") or [{}]
    if ckpt.get("epoch", 0) >= int(history[-1].get("planned_epochs") or cfg.train.epochs):
        # finished (its resume state may have been dropped: train.keep_resume_state)
        return list(ckpt["history"]), float(ckpt["best_miou"]), int(ckpt["epoch"]) + 1, ckpt.get("time_budget")
    missing = [k for k in ("optimizer", "epoch", "rng", "history") if k not in ckpt]
    if missing:
        raise SegdeployError(f"{path} cannot be resumed: it lacks {', '.join(missing)} "
                             "(written by an older segdeploy?)")
    try:
        model.load_state_dict(ckpt.get("train_model", ckpt["model"]))  # "model": the EMA, where there is one
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise SegdeployError(f"{path} does not fit {cfg.model.name}/{cfg.model.encoder} with "
                             f"{cfg.model.num_classes} classes: {first_line(exc)}") from None
    rng = ckpt["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["loader"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return list(ckpt["history"]), float(ckpt["best_miou"]), int(ckpt["epoch"]) + 1, ckpt.get("time_budget")
