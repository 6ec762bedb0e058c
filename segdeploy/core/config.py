"""One tree of dataclasses for every setting; loaded from TOML, overridden by CLI flags."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segdeploy.core.deploy_config import DeployConfig, PredictConfig
from segdeploy.core.errors import ConfigError
from segdeploy.core.lists import parse_batch_sizes, parse_list  # noqa: F401 - also read from here
from segdeploy.core.typecheck import check_type
from segdeploy.core.validate import check_path, check_value


@dataclass
class ModelConfig:
    name: str = "unet"
    encoder: str = "resnet18"
    # "imagenet" needs network access on first use; "none" is random init; anything else is a path.
    encoder_weights: str = "none"
    output_stride: int = 16  # DeepLab families only: 8 or 16
    num_classes: int | None = None  # None: taken from the dataset
    head: str = "conv"  # sam2 only: conv (stride-16 features) | fpn (fuses strides 4/8/16)
    decoder_width: float = 1.0  # smp families: decoder channels times this (0.25: a quarter of smp's default)


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: str | None = None
    size: int | list[int] = 256  # square side, or [height, width] (e.g. [512, 1024])
    max_images: int | None = None  # cap per split, for quick runs
    num_classes: int | None = None  # folder datasets: None means binary (2); cityscapes: 19, or 20 (+ "void")
    val_fraction: float = 0.12  # datasets without an official split
    split_seed: int = 0
    augment: str = "standard"  # training augmentation preset: none | flip | standard (data/augment.py)
    void_label: int | None = None  # a stored mask id that means "ignore"; mapped to 255 internally
    classes: str | None = None  # classes.json (names, palette, ids); folder datasets also find ROOT/classes.json
    workers: int = 0
    synthetic_images: int = 400  # train+val images the synthetic dataset generates
    max_megapixels: float = 150.0  # larger image files are refused before decoding (core/pixels.py; no tiling)


@dataclass
class TrainConfig:
    epochs: int = 50  # with time_hours: the most epochs the budget may fit
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adamw | adam
    loss: str = "ce"  # ce | dice-ce
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # >0: validate and save an exponential moving average of the weights (0: off)
    scheduler: str = "none"  # none | cosine
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # autocast: FP16 on CUDA, bf16 on CPUs with native bf16 (else FP32, with a message)
    channels_last: bool = False  # NHWC memory layout for model and batches
    seed: int = 0
    max_steps: int | None = None  # cap on optimiser steps per epoch
    time_hours: float | None = None  # wall-clock budget of the epoch loop; the schedule ends at the last epoch that fits
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    # false: the last epoch's last.pt keeps only the weights and history (no optimiser/scheduler/RNG state,
    # ~1/3 of the size with AdamW); every earlier epoch's last.pt is complete, so a killed run still resumes
    keep_resume_state: bool = True
    # sam2: encode each image once, train the head on cached FP16 features (unaugmented; RAM up to _mb)
    feature_cache: bool = True
    feature_cache_mb: int = 4096


@dataclass
class ExportConfig:
    opset: int = 18  # the lowest the dynamo exporter writes (below, it converts down, or keeps 18 when it cannot)
    exporter: str | None = None  # dynamo | torchscript; None: the model family's (ModelSpec.exporter)
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    simplify: bool = True  # onnxslim the FP32 graph, kept only if its logits match
    io_fp16: bool = False  # FP16 graph: FP16 input and output too
    calib_images: int = 64  # INT8: training images to calibrate on
    calib_method: str = "minmax"  # INT8, ort quantiser: minmax | entropy | percentile
    int8_activations: str = "int8"  # INT8: int8 (symmetric, TensorRT) | uint8 (ONNX Runtime x86 fast path)
    int8_quantizer: str | None = None  # nncf (CPU graphs) | ort (TensorRT's); None: nncf, ort with --trt
    max_miou_drop: float | None = None  # nncf: keep in float the fewest layers that hold mIoU within this (points)
    deploy_outputs: list[str] = field(default_factory=list)  # --deploy: model[.prec].deploy.onnx outputs; []: none


@dataclass
class EngineConfig:
    """TensorRT engine build (`export --trt`): one optimisation profile per opt batch (engines/tensorrt.py)."""

    min_batch: int = 1
    opt_batches: list[int] = field(default_factory=lambda: [1])  # the batch sizes to tune for (bench's)
    max_batch: int = 8
    workspace_gb: float = 4.0
    strongly_typed: bool = True  # precision from the graph (FP16 tensors, Q/DQ); TensorRT 11: always
    tf32: bool = False  # fp32 engines compute in true FP32 unless TF32 is asked for
    optimization_level: int | None = None  # builder optimisation level 0-5; None: TensorRT's default (3)
    device: str = "cuda"  # the GPU to build for (cuda:N)


@dataclass
class EvalConfig:
    backends: list[str] = field(default_factory=lambda: ["torch"])  # runtime variants: one evaluation each
    precisions: list[str] = field(default_factory=lambda: ["fp32"])  # graph precisions for exported backends
    split: str | None = None  # train | val | all; None: val on the run's own data, all on another dataset
    dataset: str | None = None  # another dataset (same classes); None: the run's own
    data_root: str | None = None
    max_images: int | None = None
    figures: bool = True
    top_k: int = 4  # images in best.png and worst.png
    device: str = "auto"
    batch_size: int = 8
    threads: int | None = None


@dataclass
class ParityConfig:
    backends: list[str] = field(default_factory=lambda: ["onnxruntime"])  # variants compared with torch fp32
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    max_images: int | None = None  # validation images (None: the whole split)
    batch_size: int = 8
    device: str = "auto"
    threads: int | None = None
    # Overrides of the per-precision defaults (evaluation/parity.py DEFAULT_TOLERANCES); None keeps them.
    min_agreement: float | None = None
    max_miou_delta: float | None = None
    atol: float | None = None


@dataclass
class BenchConfig:
    backends: list[str] = field(default_factory=lambda: ["torch", "onnxruntime"])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    batch_sizes: list[int] | str = field(default_factory=lambda: [1, 8])  # or "auto": 1, 2, 4, ... until OOM
    auto_max_batch: int = 1024  # largest batch "auto" tries
    warmup: int = 10  # minimum warm-up iterations; warm-up then goes on until stable
    warmup_window: int = 5
    warmup_rtol: float = 0.05
    max_warmup: int = 200
    rel_ci: float = 0.02  # timed loop: until the 95% interval of the median is within this of the median,
    max_time_s: float = 10.0  # or this many timed seconds per cell,
    min_iters: int = 10  # but never fewer iterations than this
    iters: int | None = None  # hard cap on timed iterations (None: none; runs made before kept 50)
    device: str = "auto"
    threads: int | None = None
    include_transfer: bool = False  # time host->device input and device->host output copies too
    isolate: bool = True  # each (variant, batch) cell in a fresh subprocess
    cell_timeout_s: float = 1800.0
    plugins: list[str] = field(default_factory=list)  # Python files registering extra backends
    seed: int = 0
    accuracy: bool = True  # mIoU and argmax agreement of every variant on the validation split
    max_images: int | None = None  # validation images for the accuracy columns (None: the whole split)


@dataclass
class Config:
    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    parity: ParityConfig = field(default_factory=ParityConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "name"}


def _section_class(name: str) -> type:
    return {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name != "name"}[name]


# Values earlier versions wrote, read as what they mean now: `augment = true` was horizontal flips.
_LEGACY_VALUES = {("data", "augment"): {True: "flip", False: "none"}}
# Keys earlier versions wrote (run config.toml, study files) under their one spelling now; a value becomes a list.
RENAMED_KEYS = {("eval", "backend"): "backends", ("eval", "precision"): "precisions",
                ("bench", "val_images"): "max_images", ("bench", "max_batch"): "auto_max_batch"}


def _renamed(section: str, key: str, value: Any, known: dict) -> tuple[str, Any]:
    new = RENAMED_KEYS.get((section, key), key)
    listed = new != key and isinstance(value, str) and "list" in str(known[new].type)
    return new, [value] if listed else value


def config_from_dict(raw: dict[str, Any], base: Config | None = None) -> Config:
    """Merge a nested dict (as read from TOML) into `base`; unknown keys and wrong types raise."""
    cfg = copy_config(base) if base else Config()
    for key, value in raw.items():
        if key == "name":
            cfg.name = check_type(value, str, "name")
            continue
        if key not in SECTIONS:
            raise ConfigError(f"unknown config section or key {key!r} (known: name, {', '.join(SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"config section [{key}] must be a table, got {value!r}")
        section = getattr(cfg, key)
        known = {f.name: f for f in dataclasses.fields(section)}
        for sub_key, sub_value in value.items():
            sub_key, sub_value = _renamed(key, sub_key, sub_value, known)
            if sub_key not in known:
                raise ConfigError(
                    f"unknown config key {key}.{sub_key} (known in [{key}]: {', '.join(known)})"
                )
            legacy = _LEGACY_VALUES.get((key, sub_key), {})
            if isinstance(sub_value, bool) and sub_value in legacy:
                sub_value = legacy[sub_value]
            value = check_type(sub_value, known[sub_key].type, f"{key}.{sub_key}")
            setattr(section, sub_key, check_value(f"{key}.{sub_key}", value))
    return cfg


def copy_config(cfg: Config) -> Config:
    return config_from_dict_unchecked(config_to_dict(cfg))


def config_from_dict_unchecked(raw: dict[str, Any]) -> Config:
    return Config(name=raw.get("name", ""), **{name: _section_class(name)(**raw.get(name, {})) for name in SECTIONS})


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file as a dict; a missing file or bad TOML is a one-line ConfigError."""
    path = check_path(path, "file", what)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark (Windows editors) is skipped
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        why = "not valid TOML" if isinstance(exc, tomllib.TOMLDecodeError) else "not UTF-8 text, save it as UTF-8"
        raise ConfigError(f"{path}: {why} ({exc})") from None


def load_config(path: str | Path, base: Config | None = None) -> Config:
    raw = read_toml(path)
    try:
        return config_from_dict(raw, base)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Apply dotted overrides such as {"train.lr": 3e-4}; None values are skipped."""
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        nested.setdefault(section, {})[key] = value
    return config_from_dict(nested, cfg)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def config_to_toml(cfg: Config) -> str:
    """TOML text of the resolved config; None values are left out (they mean 'default')."""
    data = config_to_dict(cfg)
    lines = [f"name = {_toml_value(data.pop('name'))}", ""]
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None)
        lines.append("")
    return "\n".join(lines)
