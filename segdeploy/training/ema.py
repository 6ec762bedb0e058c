"""Exponential moving average of a model's weights (train.ema_decay), validated and exported instead of the
raw weights, as Ultralytics and timm do: it smooths the last epochs' noise without changing the training step.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay of update number `updates` (1, 2, ...): (1 + n) / (10 + n) until it reaches `decay`, so the
    first epochs are not dominated by the random initialisation."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightEma:
    """A shadow copy of what training changes in the model's state dict (trainable weights and buffers, not a
    frozen encoder): floating tensors averaged after each optimiser step, the others (counters) copied."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        self.shadow = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
                       if name not in frozen}
        self._floating = [name for name, tensor in self.shadow.items() if tensor.is_floating_point()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        weight = 1.0 - warmed_up_decay(self.decay, self.updates)
        live = model.state_dict()
        torch._foreach_lerp_([self.shadow[n] for n in self._floating], [live[n] for n in self._floating], weight)
        for name, tensor in self.shadow.items():
            if not tensor.is_floating_point():
                tensor.copy_(live[name])

    def averaged_state(self, model: torch.nn.Module) -> dict:
        """The model's full state dict with the averaged tensors in place of the trained ones."""
        return {**model.state_dict(), **self.shadow}

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """The averaged weights in `model` (and every module sharing its parameters) inside the block; the
        training weights back afterwards, bit for bit."""
        live = model.state_dict()
        training_weights = {name: live[name].detach().clone() for name in self.shadow}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield
        finally:
            model.load_state_dict(training_weights, strict=False)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for name, tensor in self.shadow.items():
            tensor.copy_(state["shadow"][name])
