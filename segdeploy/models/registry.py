"""Model registry. Every model takes normalised NCHW float32 and returns logits NCHW at input size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from segdeploy.core.config import ModelConfig
from segdeploy.core.errors import ConfigError, ModelError

SMP_ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101")


@dataclass
class ModelSpec:
    build: Callable[[ModelConfig, int], nn.Module]
    encoders: tuple[str, ...]
    size_multiple: Callable[[ModelConfig], int]
    description: str


def _smp_weights(cfg: ModelConfig) -> str | None:
    """smp's own loader handles 'imagenet'; a path is loaded after construction."""
    return "imagenet" if cfg.encoder_weights == "imagenet" else None


def _load_encoder_file(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    if cfg.encoder_weights in ("none", "imagenet"):
        return model
    path = Path(cfg.encoder_weights).expanduser()
    if not path.is_file():
        raise ModelError(f"encoder weights not found: {path} (use 'imagenet', 'none' or a file path)")
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
        raise ModelError(f"{path} does not fit encoder {cfg.encoder}: {str(exc).splitlines()[0]}") from None
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


def build_sam2(cfg: ModelConfig, num_classes: int) -> nn.Module:
    from segdeploy.models.sam2 import build_sam2 as build

    return build(cfg, num_classes)


def _deeplab_multiple(cfg: ModelConfig) -> int:
    return 8 if cfg.output_stride == 8 else 16


MODELS: dict[str, ModelSpec] = {
    "unet": ModelSpec(build_unet, SMP_ENCODERS, lambda cfg: 32, "U-Net (smp)"),
    "deeplabv3": ModelSpec(build_deeplabv3, SMP_ENCODERS, _deeplab_multiple, "DeepLabV3 (smp), OS 8 or 16"),
    "deeplabv3plus": ModelSpec(build_deeplabv3plus, SMP_ENCODERS, _deeplab_multiple,
                               "DeepLabV3+ (smp), OS 8 or 16"),
    "sam2": ModelSpec(build_sam2, ("hiera-t", "hiera-s", "hiera-b+", "hiera-l"), lambda cfg: 32,
                      "SAM2.1 Hiera image encoder (frozen) + conv or FPN head"),
}


def validate_model_config(cfg: ModelConfig, size: int) -> ModelSpec:
    if cfg.name not in MODELS:
        raise ConfigError(f"unknown model {cfg.name!r} (known: {', '.join(MODELS)})")
    spec = MODELS[cfg.name]
    if cfg.encoder not in spec.encoders:
        raise ConfigError(f"unknown encoder {cfg.encoder!r} for {cfg.name} (known: {', '.join(spec.encoders)})")
    if cfg.name.startswith("deeplab") and cfg.output_stride not in (8, 16):
        raise ConfigError(f"output stride must be 8 or 16, got {cfg.output_stride}")
    if cfg.name == "sam2" and cfg.head not in ("conv", "fpn"):
        raise ConfigError(f"unknown sam2 head {cfg.head!r} (known: conv, fpn)")
    multiple = spec.size_multiple(cfg)
    if size <= 0 or size % multiple:
        raise ConfigError(
            f"input size {size} is not a multiple of {multiple}, which {cfg.name} needs "
            f"(try {max(multiple, round(size / multiple) * multiple)})"
        )
    return spec


def build_model(cfg: ModelConfig, num_classes: int, size: int) -> nn.Module:
    """Build a model after checking name, encoder and input size; logits come back at input size."""
    spec = validate_model_config(cfg, size)
    return spec.build(cfg, num_classes)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
