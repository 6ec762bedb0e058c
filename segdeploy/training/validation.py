"""The steps training shares with validation and the training benchmarks: autocast, device placement, and
the validation pass (mean loss and confusion matrix)."""

from __future__ import annotations

import numpy as np
import torch

from segdeploy.data.metrics import confusion_matrix


def autocast_for(device: str, dtype: torch.dtype | None):
    """torch.autocast on `device` in `dtype`; a no-op context for FP32 (dtype None)."""
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None)


def to_device(images: torch.Tensor, device: str, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last and images.ndim == 4 else images


@torch.no_grad()
def validate(model, loader, loss_fn, num_classes: int, device: str, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False) -> tuple[float, np.ndarray]:
    """Mean loss and the confusion matrix of `model` over `loader`, in the training's autocast dtype."""
    model.eval()
    cm = np.zeros((num_classes, num_classes), np.int64)
    total_loss, batches = 0.0, 0
    for images, masks in loader:
        images, masks = to_device(images, device, channels_last), masks.to(device)
        with autocast_for(device, amp_dtype):
            logits = model(images)
        total_loss += float(loss_fn(logits, masks))
        batches += 1
        cm += confusion_matrix(masks.cpu().numpy(), logits.argmax(1).cpu().numpy(), num_classes)
    return total_loss / max(batches, 1), cm
