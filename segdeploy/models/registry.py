"""Model registry. Every model takes normalised NCHW float32 and returns logits NCHW at input size.

What differs between families is a field of their ModelSpec (encoders, input size multiple, output
stride and which encoders can dilate to it, frozen encoder, extra graphs to export), so no other module
asks for a model by name. smp's families take every smp encoder (listed by smp) and `tu-` timm names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import importlib
from typing import TYPE_CHECKING, Any, Callable, Mapping

from segdeploy.core.config import Config, ModelConfig
from segdeploy.core.errors import ConfigError
from segdeploy.core.registry import Registry
from segdeploy.core.size import input_hw, size_label
from segdeploy.core.validate import check_path

if TYPE_CHECKING:  # the registry itself stays free of torch, so listing it (`train --help`) is instant
    from torch import nn

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[ModelConfig, int], "nn.Module"]
    # The encoders listed for the family (a call: smp's list needs smp imported, `--help` must not).
    encoders: Callable[[], tuple[str, ...]]
    size_multiple: Callable[[ModelConfig], int]
    description: str
    output_strides: tuple[int, ...] = ()  # DeepLab: 8 or 16; empty: the model has no such choice
    heads: tuple[str, ...] = ()  # sam2: conv or fpn
    # Frozen encoder with encode()/decode(): training may cache the encoder's features.
    frozen_encoder: bool = False
    # Graphs exported beside model.onnx for deeper parity: name -> (module of the model, output name).
    extra_graphs: Callable[[Any], dict[str, tuple[Any, str]]] | None = None
    # With extra graphs: the model returning (logits, *their outputs) from one pass, which export traces once.
    with_extra_outputs: Callable[[Any], Any] | None = None
    # Fold constants with onnxslim instead of the checked simplification (graphs it cannot trace cleanly).
    fold_constants: bool = False
    min_opset: int = 11
    # The ONNX exporter `export` uses unless --exporter names one: torch.export-based "dynamo" (maintained),
    # or "torchscript" (deprecated by torch) for a family whose dynamo graphs fail parity, with the reason.
    exporter: str = "dynamo"
    exporter_reason: str = ""
    encoder_weights_help: str = "imagenet, none or a file path"
    # Whether an --encoder-weights value names a local file (not a word such as none, or a download id).
    weights_is_file: Callable[[str], bool] = lambda weights: weights not in ("none", "imagenet")
    encoder_help: str = ""  # what --help says the family accepts
    # Encoders accepted beyond the list (smp: `tu-<timm model>`).
    accepts_encoder: Callable[[str], bool] = lambda encoder: False
    # Why an encoder cannot reach the family's output strides by dilation (None: it can).
    dilation_refusal: Callable[[str], str | None] = lambda encoder: None
    # --decoder-width scales these smp keywords: name -> (default channels, multiple each scaled value keeps,
    # e.g. FPN's GroupNorm(32)). Empty: the family has no width choice.
    decoder_channels: Mapping[str, tuple[int | tuple[int, ...], int]] = field(default_factory=dict)


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """A builder imported when it is first called."""
    def call(*args):
        return getattr(importlib.import_module(f"segdeploy.models.{module}"), name)(*args)

    return call


def _smp_family(class_name: str, description: str, decoder_channels: dict, dilated: bool = False) -> ModelSpec:
    """An smp decoder over every smp encoder; DeepLab's input multiple is its output stride (8 or 16)."""
    def build(cfg: ModelConfig, num_classes: int) -> "nn.Module":
        extra = decoder_kwargs(decoder_channels, cfg.decoder_width)
        return _lazy("smp", "smp_builder")(class_name, dilated, extra)(cfg, num_classes)

    size_multiple = (lambda cfg: 8 if cfg.output_stride == 8 else 16) if dilated else (lambda cfg: 32)
    return ModelSpec(build, _lazy("smp", "encoder_names"), size_multiple, description,
                     output_strides=(8, 16) if dilated else (),
                     encoder_help="any smp encoder or tu-<timm model>",
                     accepts_encoder=_lazy("smp", "is_timm_encoder"),
                     dilation_refusal=_lazy("smp", "dilation_refusal") if dilated else lambda encoder: None,
                     decoder_channels=decoder_channels)


def _scaled(channels: int, width: float, multiple: int) -> int:
    return max(multiple, round(channels * width / multiple) * multiple)


def decoder_kwargs(decoder_channels: Mapping[str, tuple[int | tuple[int, ...], int]], width: float) -> dict:
    """smp keyword arguments for a decoder `width` times the family's default (none at width 1)."""
    if width == 1:
        return {}
    return {name: tuple(_scaled(c, width, multiple) for c in default) if isinstance(default, tuple)
            else _scaled(default, width, multiple) for name, (default, multiple) in decoder_channels.items()}


SAM2_ENCODERS = ("hiera-t", "hiera-s", "hiera-b+", "hiera-l")

MODELS: Registry[ModelSpec] = Registry("model")
ASPP_CHANNELS = {"decoder_channels": (256, 8)}
MODELS.register("unet", _smp_family("Unet", "U-Net (smp)", {"decoder_channels": ((256, 128, 64, 32, 16), 4)}))
MODELS.register("deeplabv3", _smp_family("DeepLabV3", "DeepLabV3 (smp), OS 8 or 16", ASPP_CHANNELS, dilated=True))
MODELS.register("deeplabv3plus", _smp_family("DeepLabV3Plus", "DeepLabV3+ (smp), OS 8 or 16", ASPP_CHANNELS,
                                             dilated=True))
MODELS.register("fpn", _smp_family("FPN", "FPN (smp)", {"decoder_pyramid_channels": (256, 8),
                                                         "decoder_segmentation_channels": (128, 32)}))
MODELS.register("segformer", _smp_family("Segformer", "Segformer all-MLP decoder (smp)",
                                         {"decoder_segmentation_channels": (256, 8)}))
MODELS.register("sam2", ModelSpec(
    _lazy("sam2", "build_sam2"), lambda: SAM2_ENCODERS, lambda cfg: 32,
    "SAM2.1 Hiera image encoder (frozen) + conv or FPN head", heads=("conv", "fpn"), frozen_encoder=True,
    extra_graphs=_lazy("sam2", "extra_graphs"), with_extra_outputs=_lazy("sam2", "LogitsAndVisionFeatures"),
    fold_constants=True, min_opset=17,
    encoder_weights_help="none, a SAM2/SAM2.1 .pt file or a Hugging Face id (facebook/sam2.1-hiera-tiny)",
    weights_is_file=lambda weights: weights not in ("none", "imagenet") and not weights.startswith("facebook/"),
    encoder_help=", ".join(SAM2_ENCODERS)))


def _check_encoder(cfg: ModelConfig, spec: ModelSpec) -> None:
    if cfg.encoder in spec.encoders() or spec.accepts_encoder(cfg.encoder):
        return
    known = spec.encoders()
    shown = ", ".join(known[:12]) + (f", ... ({len(known)} in all; `segdeploy models` lists them)"
                                     if len(known) > 12 else "")
    raise ConfigError(f"unknown encoder {cfg.encoder!r} for {cfg.name} (known: {shown})")


def validate_model_config(cfg: ModelConfig, size: int | list[int]) -> ModelSpec:
    spec = MODELS[cfg.name]
    _check_encoder(cfg, spec)
    if spec.output_strides and cfg.output_stride not in spec.output_strides:
        raise ConfigError(f"output stride must be {' or '.join(map(str, spec.output_strides))}, "
                          f"got {cfg.output_stride}")
    if spec.output_strides and (reason := spec.dilation_refusal(cfg.encoder)):
        raise ConfigError(f"{cfg.name} needs output stride {cfg.output_stride} by dilation, which encoder "
                          f"{cfg.encoder} does not support ({reason.rstrip('.!')}); try --model unet or fpn")
    if cfg.decoder_width != 1 and not spec.decoder_channels:
        raise ConfigError(f"{cfg.name} has no decoder width choice; leave --decoder-width at 1")
    if spec.heads and cfg.head not in spec.heads:
        raise ConfigError(f"unknown {cfg.name} head {cfg.head!r} (known: {', '.join(spec.heads)})")
    multiple = spec.size_multiple(cfg)
    height, width = input_hw(size)
    sides = [("input size", height)] if height == width else [("input height", height), ("input width", width)]
    for side, value in sides:
        if value <= 0 or value % multiple:
            raise ConfigError(f"{side} {value} is not a multiple of {multiple}, which {cfg.name} needs "
                              f"(try {max(multiple, round(value / multiple) * multiple)})")
    return spec


def check_weights_file(cfg: ModelConfig) -> None:
    """An encoder weights file must exist before a run directory is made for it."""
    if MODELS[cfg.name].weights_is_file(cfg.encoder_weights):
        check_path(cfg.encoder_weights, "file", "encoder weights")


def build_model(cfg: ModelConfig, num_classes: int, size: int | list[int]) -> "nn.Module":
    """Build a model after checking name, encoder and input size; logits come back at input size."""
    spec = validate_model_config(cfg, size)
    return spec.build(cfg, num_classes)


def output_stride(cfg: ModelConfig) -> int | None:
    """The model's output stride when its family has that choice, else None."""
    return cfg.output_stride if MODELS[cfg.name].output_strides else None


def model_identity(cfg: Config, num_classes: int | None) -> str:
    stride = output_stride(cfg.model)
    width = f" decoder width {cfg.model.decoder_width:g}" if cfg.model.decoder_width != 1 else ""
    return (f"{cfg.model.name}/{cfg.model.encoder}{f' OS {stride}' if stride else ''}{width} "
            f"with {num_classes} classes at {size_label(cfg.data.size)}px")


def count_parameters(model: "nn.Module | Mapping", trainable_only: bool = False) -> int:
    """Parameters of a model, or of a checkpoint's state dict (BatchNorm running statistics left out)."""
    if hasattr(model, "parameters"):
        return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
    return sum(t.numel() for name, t in model.items() if not name.endswith(BN_BUFFERS))
