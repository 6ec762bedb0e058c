"""Losses: cross-entropy and Dice+CE; the void label 255 is ignored by both."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from segdeploy.core.config import TrainConfig
from segdeploy.core.errors import ConfigError
from segdeploy.data.preprocess import VOID_LABEL


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 0.1) -> torch.Tensor:
    """1 - mean over classes of soft Dice from the softmax, void pixels excluded."""
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    valid = (target != VOID_LABEL).unsqueeze(1).to(probs.dtype)
    one_hot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    probs, one_hot = probs * valid, one_hot * valid
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    cardinality = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (cardinality + smooth)
    return 1 - dice.mean()


def make_loss(cfg: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def ce(logits, target):
        return F.cross_entropy(logits.float(), target, ignore_index=VOID_LABEL,
                               label_smoothing=cfg.label_smoothing)

    if cfg.loss == "ce":
        return ce
    if cfg.loss == "dice-ce":
        return lambda logits, target: 0.5 * ce(logits, target) + 0.5 * soft_dice_loss(logits, target)
    raise ConfigError(f"unknown loss {cfg.loss!r} (known: ce, dice-ce)")
