"""segmentation-models-pytorch families: U-Net, DeepLabV3, DeepLabV3+ (ResNet encoders)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from segdeploy.core.config import ModelConfig
from segdeploy.core.errors import ModelError, first_line
from segdeploy.core.validate import check_path

def _smp_weights(cfg: ModelConfig) -> str | None:
    """smp's own loader handles 'imagenet'; a path is loaded after construction."""
    return "imagenet" if cfg.encoder_weights == "imagenet" else None


def _load_encoder_file(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    if cfg.encoder_weights in ("none", "imagenet"):
        return model
    path = check_path(cfg.encoder_weights, "file", "encoder weights", error=ModelError)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ModelError(f"cannot read encoder weights {path}: {exc}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not set(state) & set(model.encoder.state_dict()):
        raise ModelError(f"{path} holds no weights for encoder {cfg.encoder}")
    try:
        model.encoder.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ModelError(f"{path} does not fit encoder {cfg.encoder}: {first_line(exc)}") from None
    return model


def _imagenet_guard(build: Callable[[], nn.Module], cfg: ModelConfig) -> nn.Module:
    try:
        return build()
    except (OSError, RuntimeError) as exc:
        if cfg.encoder_weights == "imagenet":
            raise ModelError(
                f"could not load ImageNet weights for {cfg.encoder} ({type(exc).__name__}: {exc}); "
                "check network access, or use --encoder-weights none|PATH"
            ) from None
        raise


def build_unet(cfg: ModelConfig, num_classes: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    model = _imagenet_guard(lambda: smp.Unet(cfg.encoder, encoder_weights=_smp_weights(cfg),
                                             classes=num_classes), cfg)
    return _load_encoder_file(model, cfg)


def build_deeplabv3(cfg: ModelConfig, num_classes: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    model = _imagenet_guard(lambda: smp.DeepLabV3(cfg.encoder, encoder_weights=_smp_weights(cfg),
                                                  encoder_output_stride=cfg.output_stride,
                                                  classes=num_classes), cfg)
    return _load_encoder_file(model, cfg)


def build_deeplabv3plus(cfg: ModelConfig, num_classes: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    model = _imagenet_guard(lambda: smp.DeepLabV3Plus(cfg.encoder, encoder_weights=_smp_weights(cfg),
                                                      encoder_output_stride=cfg.output_stride,
                                                      classes=num_classes), cfg)
    return _load_encoder_file(model, cfg)
