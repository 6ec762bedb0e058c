"""SAM2.1 image encoder (Hiera trunk + FPN neck), frozen, with a small trainable segmentation head.

The encoder is built from the `sam2` package's own hydra configs (`model.image_encoder` only, not the
prompt decoder or memory modules) and always stays in eval mode with `requires_grad=False`.
`encode` gives the features the head reads and `decode` turns them into logits at the input size,
so training can run the head alone from cached features (see `segdeploy.feature_cache`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from segdeploy.core.config import ModelConfig
from segdeploy.core.errors import BackendUnavailable, ConfigError, ModelError

# encoder name -> (sam2 hydra config, Hugging Face id of the SAM2.1 checkpoint)
HIERA_ENCODERS: dict[str, tuple[str, str]] = {
    "hiera-t": ("configs/sam2.1/sam2.1_hiera_t.yaml", "facebook/sam2.1-hiera-tiny"),
    "hiera-s": ("configs/sam2.1/sam2.1_hiera_s.yaml", "facebook/sam2.1-hiera-small"),
    "hiera-b+": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "facebook/sam2.1-hiera-base-plus"),
    "hiera-l": ("configs/sam2.1/sam2.1_hiera_l.yaml", "facebook/sam2.1-hiera-large"),
}
# SAM2 (not 2.1) checkpoints share the image-encoder architecture of the same size.
_SAM2_HF_IDS = {"hiera-t": "facebook/sam2-hiera-tiny", "hiera-s": "facebook/sam2-hiera-small",
                "hiera-b+": "facebook/sam2-hiera-base-plus", "hiera-l": "facebook/sam2-hiera-large"}
HEADS = ("conv", "fpn")
FEATURE_DIM = 256  # d_model of the SAM2 FPN neck, every size
INSTALL_HINT = ("install it with `make install` (SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2, "
                "after hydra-core and iopath); see README 'SAM2'")


def _import_sam2():
    try:
        import sam2  # noqa: F401 - initialises sam2's hydra config module
        from hydra import compose
        from hydra.utils import instantiate
        from omegaconf import OmegaConf
    except ImportError as exc:
        raise BackendUnavailable(f"--model sam2 needs the sam2 package ({exc.name} is missing)",
                                 hint=INSTALL_HINT) from None
    return compose, instantiate, OmegaConf


def build_image_encoder(encoder: str) -> nn.Module:
    """SAM2.1 `model.image_encoder` (trunk + neck, scalp 1: strides 4/8/16) with random weights."""
    if encoder not in HIERA_ENCODERS:
        raise ConfigError(f"unknown SAM2 encoder {encoder!r} (known: {', '.join(HIERA_ENCODERS)})")
    compose, instantiate, OmegaConf = _import_sam2()
    cfg = compose(config_name=HIERA_ENCODERS[encoder][0])
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model.image_encoder, _recursive_=True)


def resolve_weights(encoder: str, weights: str) -> Path | None:
    """'none' -> None; a Hugging Face id -> the file sam2's own loader downloads; else an existing path."""
    if weights == "none":
        return None
    allowed_ids = {HIERA_ENCODERS[encoder][1], _SAM2_HF_IDS[encoder]}
    if weights.startswith("facebook/sam2"):
        if weights not in allowed_ids:
            raise ModelError(f"{weights!r} is not a checkpoint for encoder {encoder} "
                             f"(use {' or '.join(sorted(allowed_ids))}, none, or a .pt file)")
        _import_sam2()
        from sam2.build_sam import _hf_download

        try:
            _, ckpt = _hf_download(weights)
        except Exception as exc:  # noqa: BLE001 - network, auth and cache errors all mean "not downloadable"
            raise ModelError(f"could not download {weights} ({type(exc).__name__}); check network access, "
                             "or pass the downloaded .pt file to --encoder-weights") from None
        return Path(ckpt)
    if weights == "imagenet":
        raise ModelError("SAM2 encoders have no 'imagenet' weights: use none, a SAM2/SAM2.1 .pt file, "
                         f"or {HIERA_ENCODERS[encoder][1]}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelError(f"SAM2 checkpoint not found: {path} (use none, a .pt file, or "
                         f"{HIERA_ENCODERS[encoder][1]})")
    return path


def load_encoder_checkpoint(image_encoder: nn.Module, path: Path, encoder: str) -> None:
    """Load the `image_encoder.*` tensors of a Meta SAM2/SAM2.1 checkpoint ({'model': state_dict})."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ModelError(f"cannot read SAM2 checkpoint {path} ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ModelError(f"{path} is not a SAM2 checkpoint (expected a dict with key 'model')")
    prefix = "image_encoder."
    encoder_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not encoder_state:
        raise ModelError(f"{path} holds no image_encoder.* weights: not a SAM2 checkpoint")
    try:
        image_encoder.load_state_dict(encoder_state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise ModelError(f"{path} does not fit SAM2 encoder {encoder} (another Hiera size?): {detail}") from None


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ConvHead(nn.Module):
    """Two Conv3x3-BN-ReLU (256 -> 256 -> 256) on stride-16 vision_features, then 1x1 to classes."""

    levels = (2,)

    def __init__(self, num_classes: int, channels: int = FEATURE_DIM):
        super().__init__()
        self.blocks = nn.Sequential(conv_bn_relu(FEATURE_DIM, channels), conv_bn_relu(channels, channels))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.blocks(features[0]))


class FpnHead(nn.Module):
    """Fuses the three FPN levels (strides 4/8/16): 3x3 conv 256 -> 64 each, upsample to stride 4,
    concatenate, one 3x3 conv 192 -> 64, 1x1 to classes."""

    levels = (0, 1, 2)

    def __init__(self, num_classes: int, channels: int = 64):
        super().__init__()
        self.laterals = nn.ModuleList(conv_bn_relu(FEATURE_DIM, channels) for _ in self.levels)
        self.fuse = conv_bn_relu(channels * len(self.levels), channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        maps = [lateral(f) for lateral, f in zip(self.laterals, features)]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        return self.classifier(self.fuse(torch.cat(maps, 1)))


class SAM2Segmenter(nn.Module):
    """Frozen SAM2 image encoder + trainable head; normalised NCHW in, logits NCHW at input size out."""

    def __init__(self, image_encoder: nn.Module, num_classes: int, head: str = "conv"):
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"unknown SAM2 head {head!r} (known: {', '.join(HEADS)})")
        self.image_encoder = image_encoder.eval()
        self.image_encoder.requires_grad_(False)
        self.head = ConvHead(num_classes) if head == "conv" else FpnHead(num_classes)

    def train(self, mode: bool = True) -> "SAM2Segmenter":
        super().train(mode)
        self.image_encoder.eval()  # frozen: drop path and any norm statistics stay in inference mode
        return self

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The encoder features the head reads: backbone_fpn levels (level 2 is vision_features)."""
        fpn = self.image_encoder(images)["backbone_fpn"]
        return [fpn[level] for level in self.head.levels]

    def decode(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        logits = self.head(features)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images), images.shape[-2:])


class VisionFeatures(nn.Module):
    """The encoder alone, returning `vision_features` (stride 16): the first level of parity."""

    def __init__(self, model: SAM2Segmenter):
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)["vision_features"]


class LogitsAndVisionFeatures(nn.Module):
    """The model with `vision_features` as a second output, from one encoder pass: exported once, then cut
    into model.onnx and vision_features.onnx (export/extra_graphs.py)."""

    def __init__(self, model: SAM2Segmenter):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.model.image_encoder(images)
        features = [encoded["backbone_fpn"][level] for level in self.model.head.levels]
        return self.model.decode(features, images.shape[-2:]), encoded["vision_features"]


def build_sam2(cfg: ModelConfig, num_classes: int) -> nn.Module:
    path = resolve_weights(cfg.encoder, cfg.encoder_weights)
    image_encoder = build_image_encoder(cfg.encoder)
    if path is not None:
        load_encoder_checkpoint(image_encoder, path, cfg.encoder)
    return SAM2Segmenter(image_encoder, num_classes, head=getattr(cfg, "head", "conv"))


def extra_graphs(model: SAM2Segmenter) -> dict[str, tuple[nn.Module, str]]:
    """Exported beside model.onnx for feature-level parity: the encoder alone, up to vision_features."""
    return {"vision_features": (VisionFeatures(model).eval(), "vision_features")}
