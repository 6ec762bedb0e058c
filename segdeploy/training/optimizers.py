"""Optimisers and learning-rate schedules: two registries of the same shape as LOSSES (training/losses.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from segdeploy.core.config import TrainConfig
from segdeploy.core.registry import Registry


@dataclass(frozen=True)
class OptimizerSpec:
    build: Callable[[TrainConfig, Any], torch.optim.Optimizer]  # (settings, parameters)
    description: str


@dataclass(frozen=True)
class SchedulerSpec:
    build: Callable[[torch.optim.Optimizer, int], Any]  # (optimiser, total steps) -> scheduler or None
    description: str
    # (scheduler, new total steps): end the schedule at another step, from where it is now (train --time)
    retarget: Callable[[Any, int], None] = lambda scheduler, steps: None


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")
OPTIMIZERS.register("adamw", OptimizerSpec(
    lambda cfg, params: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "AdamW, decoupled weight decay"))
OPTIMIZERS.register("adam", OptimizerSpec(
    lambda cfg, params: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "Adam, weight decay as L2"))

SCHEDULERS: Registry[SchedulerSpec] = Registry("scheduler")
SCHEDULERS.register("none", SchedulerSpec(lambda optimizer, steps: None, "constant learning rate"))
SCHEDULERS.register("cosine", SchedulerSpec(
    lambda optimizer, steps: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps)),
    "cosine annealing to 0 over all steps",
    # CosineAnnealingLR's recursive form then follows the new cosine, scaled to the current LR, to 0 at `steps`
    lambda scheduler, steps: setattr(scheduler, "T_max", max(1, steps))))


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer].build(cfg, params)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    return SCHEDULERS[cfg.scheduler].build(optimizer, total_steps)


def retarget_scheduler(cfg: TrainConfig, scheduler, total_steps: int) -> None:
    """Make the schedule end after `total_steps` optimiser steps in all (a time budget refitted the epochs)."""
    if scheduler is not None:
        SCHEDULERS[cfg.scheduler].retarget(scheduler, total_steps)
