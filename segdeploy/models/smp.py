"""segmentation-models-pytorch families (U-Net, DeepLabV3/V3+, FPN, Segformer) over smp's encoder zoo."""

from __future__ import annotations

from typing import Callable
import warnings

import torch
from torch import nn

from segdeploy.core.config import ModelConfig
from segdeploy.core.errors import ModelError, first_line
from segdeploy.core.validate import check_path

TIMM_PREFIX = "tu-"

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


def encoder_names() -> tuple[str, ...]:
    """smp's named encoders (all build offline with encoder_weights=None); `tu-` timm names come on top."""
    from segmentation_models_pytorch.encoders import get_encoder_names

    return tuple(get_encoder_names())


def is_timm_encoder(name: str) -> bool:
    """smp's `tu-<timm model>` encoders: any timm model name (features_only is checked when built)."""
    if not name.startswith(TIMM_PREFIX):
        return False
    import timm

    return timm.is_model(name[len(TIMM_PREFIX):])


def dilation_refusal(name: str) -> str | None:
    """Why an encoder cannot trade strides for dilation (DeepLab OS 8/16), or None when it can.

    smp's encoders that cannot dilate override EncoderMixin.make_dilated with one that raises: calling it
    unbound costs nothing and gives smp's own reason. A `tu-` encoder is asked of timm on the meta device
    (models without dilation do not take output_stride).
    """
    from segmentation_models_pytorch.encoders import encoders
    from segmentation_models_pytorch.encoders._base import EncoderMixin

    if is_timm_encoder(name):
        return _timm_dilation_refusal(name[len(TIMM_PREFIX):])
    entry = encoders.get(name)
    if entry is None or entry["encoder"].make_dilated is EncoderMixin.make_dilated:
        return None
    try:
        entry["encoder"].make_dilated(None, 16)
    except ValueError as exc:
        return str(exc).strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - an override that needs a built encoder: let the build decide
        return None
    return None


def _timm_dilation_refusal(timm_name: str) -> str | None:
    import timm

    try:
        with torch.device("meta"):
            timm.create_model(timm_name, features_only=True, output_stride=16)
    except (TypeError, ValueError, AssertionError) as exc:
        return f"timm: {str(exc).strip().splitlines()[0]}"
    except Exception:  # noqa: BLE001 - not about dilation: the build reports it
        return None
    return None


def smp_builder(class_name: str, dilated: bool, decoder: dict) -> Callable[[ModelConfig, int], nn.Module]:
    """A builder for smp's `class_name`; `dilated` families pass the configured output stride, `decoder`
    the decoder's channel keywords (registry.decoder_kwargs)."""
    def build(cfg: ModelConfig, num_classes: int) -> nn.Module:
        import segmentation_models_pytorch as smp

        model_class = getattr(smp, class_name)
        extra = {"encoder_output_stride": cfg.output_stride, **decoder} if dilated else dict(decoder)

        def make() -> nn.Module:
            with warnings.catch_warnings():  # smp's deprecation notice for its `timm-` names
                warnings.simplefilter("ignore", DeprecationWarning)
                return model_class(cfg.encoder, encoder_weights=_smp_weights(cfg), classes=num_classes, **extra)

        try:
            model = _imagenet_guard(make, cfg)
        except (ValueError, TypeError, AssertionError) as exc:
            stride = f" at output stride {cfg.output_stride}" if dilated else ""
            raise ModelError(f"{class_name} cannot use encoder {cfg.encoder}{stride}: "
                             f"{str(exc).strip().splitlines()[0]}") from None
        return _load_encoder_file(model, cfg)

    return build
