"""Losses: cross-entropy and Dice+CE; the void label 255 is ignored by both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from segdeploy.core.config import TrainConfig
from segdeploy.core.registry import Registry
from segdeploy.data.preprocess import VOID_LABEL

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def cross_entropy(cfg: TrainConfig) -> LossFn:
    def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # The mean over labelled pixels, written out: torch's mean is 0/0 = NaN for a batch that is all
        # void; here such a batch gives 0 (and zero gradients), without a host sync.
        total = F.cross_entropy(logits.float(), target, ignore_index=VOID_LABEL,
                                label_smoothing=cfg.label_smoothing, reduction="sum")
        return total / (target != VOID_LABEL).sum().clamp(min=1)

    return ce


def dice_cross_entropy(cfg: TrainConfig) -> LossFn:
    ce = cross_entropy(cfg)
    return lambda logits, target: 0.5 * ce(logits, target) + 0.5 * soft_dice_loss(logits, target)


@dataclass(frozen=True)
class LossSpec:
    build: Callable[[TrainConfig], LossFn]
    description: str


LOSSES: Registry[LossSpec] = Registry("loss")
LOSSES.register("ce", LossSpec(cross_entropy, "cross-entropy (label smoothing from train.label_smoothing)"))
LOSSES.register("dice-ce", LossSpec(dice_cross_entropy, "0.5 cross-entropy + 0.5 soft Dice"))


def make_loss(cfg: TrainConfig) -> LossFn:
    return LOSSES[cfg.loss].build(cfg)
