"""`segdeploy train`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from segdeploy.cli.common import DEFAULTS, DeviceOption, handle_errors, registry_help, state
from segdeploy.core.errors import SegdeployError
from segdeploy.core.progress import console
from segdeploy.data.registry import DATASETS
from segdeploy.core.validate import MAX_CLASSES
from segdeploy.models.registry import MODELS
from segdeploy.training.losses import LOSSES
from segdeploy.training.optimizers import OPTIMIZERS, SCHEDULERS

# flag -> config key; every one of them is fixed by a run's config.toml, so --resume refuses it
TRAIN_KEYS = {
    "dataset": "data.dataset", "data_root": "data.root", "num_classes": "data.num_classes", "size": "data.size",
    "max_images": "data.max_images", "augment": "data.augment", "void_label": "data.void_label",
    "max_megapixels": "data.max_megapixels",
    "classes": "data.classes", "model": "model.name", "encoder": "model.encoder",
    "encoder_weights": "model.encoder_weights", "output_stride": "model.output_stride", "head": "model.head",
    "decoder_width": "model.decoder_width",
    "feature_cache": "train.feature_cache", "feature_cache_mb": "train.feature_cache_mb", "epochs": "train.epochs",
    "batch_size": "train.batch_size", "lr": "train.lr", "weight_decay": "train.weight_decay",
    "optimizer": "train.optimizer", "loss": "train.loss", "label_smoothing": "train.label_smoothing",
    "ema_decay": "train.ema_decay",
    "scheduler": "train.scheduler", "device": "train.device", "amp": "train.amp", "seed": "train.seed",
    "max_steps": "train.max_steps", "threads": "train.threads", "channels_last": "train.channels_last",
    "keep_resume_state": "train.keep_resume_state", "time": "train.time_hours",
}
RESUME_MAY_CHANGE = ("device", "threads")  # speed, not results


def _augment_presets() -> str:
    from segdeploy.data.augment import AUGMENTATIONS

    return "; ".join(f"{name} ({spec.description})" for name, spec in AUGMENTATIONS.items())


def _class_counts() -> str:
    """'synthetic: any (default 4), kvasir: 2, ...' from the dataset registry."""
    return ", ".join(f"{name}: {' or '.join(map(str, spec.class_counts)) if spec.class_counts else f'any (default {spec.default_classes})'}"
                     for name, spec in DATASETS.items())


def _per_model(field: str) -> str:
    """'unet, deeplabv3, ...: resnet18, ...; sam2: hiera-t, ...' from the model registry."""
    groups: dict[str, list[str]] = {}
    for name, spec in MODELS.items():
        value = getattr(spec, field)
        if not value:
            continue
        groups.setdefault(", ".join(value) if isinstance(value, tuple) else value, []).append(name)
    return "; ".join(f"{', '.join(models)}: {value}" for value, models in groups.items())


@handle_errors
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config; flags override it."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run directory to create [default: runs/<dataset>-<model>-<encoder>]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    dataset: Optional[str] = typer.Option(None, help=f"Dataset: {registry_help(DATASETS)}. [default: {DEFAULTS.data.dataset}]"),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset folder (not needed for synthetic)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help=f"Classes, 2..{MAX_CLASSES} (masks are uint8, 255 = void): {_class_counts()}."),
    size: Optional[str] = typer.Option(None, help="Input size in pixels: 256 (square) or HEIGHTxWIDTH, e.g. 512x1024. [default: 256]"),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use at most this many images per split."),
    augment: Optional[str] = typer.Option(None, "--augment", help=f"Augmentation preset: {_augment_presets()}. [default: {DEFAULTS.data.augment}]"),
    void_label: Optional[int] = typer.Option(None, "--void-label", help="Stored mask value that means 'ignore', mapped to 255; never a class id (e.g. 11 for CamVid's classes 0..10; a set with 0 as void lists its ids in a classes.json)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="classes.json with class names, palette and ids for folder datasets (default: ROOT/classes.json if present)."),
    model: Optional[str] = typer.Option(None, help=f"Model: {registry_help(MODELS)}. [default: {DEFAULTS.model.name}]"),
    encoder: Optional[str] = typer.Option(None, help=f"Encoder: {_per_model('encoder_help')}. `segdeploy models --size N` lists each family's encoders with parameters and GFLOPs. [default: {DEFAULTS.model.encoder}]"),
    encoder_weights: Optional[str] = typer.Option(None, "--encoder-weights", help=f"{_per_model('encoder_weights_help')}. [default: none]"),
    output_stride: Optional[int] = typer.Option(None, "--output-stride", help="DeepLab output stride, 8 or 16. [default: 16]"),
    head: Optional[str] = typer.Option(None, help=f"Head: {_per_model('heads')} (conv: stride-16 features, fpn: strides 4/8/16). [default: {DEFAULTS.model.head}]"),
    decoder_width: Optional[float] = typer.Option(None, "--decoder-width", help="smp families: decoder channels times this, 0 < W <= 4 (0.25: a quarter of smp's default; the decoder dominates the compute of small encoders at 128 px). [default: 1]"),
    feature_cache: Optional[bool] = typer.Option(None, "--feature-cache/--no-feature-cache", help="Frozen encoders (sam2): encode each image once, train the head from cached FP16 features (off with --augment). [default: on]"),
    feature_cache_mb: Optional[int] = typer.Option(None, "--feature-cache-mb", help="Keep the feature cache in memory up to this size, else in a file under RUN/cache/. [default: 4096]"),
    epochs: Optional[int] = typer.Option(None, help="Epochs (with --time: the most the budget may fit). [default: 50]"),
    time: Optional[float] = typer.Option(None, "--time", help="Training budget in hours of wall clock (e.g. 0.5): after each epoch the epochs that fit are re-estimated (at most --epochs: give a large --epochs to let the budget alone decide), the LR schedule ends at the last of them, and training stops when another epoch would not fit; RUN/time_budget.json records what happened.", show_default=False),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size. [default: 16]"),
    lr: Optional[float] = typer.Option(None, help="Learning rate. [default: 1e-4]"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Weight decay. [default: 1e-4]"),
    optimizer: Optional[str] = typer.Option(None, help=f"{registry_help(OPTIMIZERS)}. [default: {DEFAULTS.train.optimizer}]"),
    loss: Optional[str] = typer.Option(None, help=f"{registry_help(LOSSES)}. [default: {DEFAULTS.train.loss}]"),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing", help="CE label smoothing. [default: 0]"),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help="Validate, keep and export an exponential moving average of the weights with this decay per optimiser step (e.g. 0.999; warmed up as (1+n)/(10+n) over the first steps); 0: the trained weights. [default: 0]"),
    scheduler: Optional[str] = typer.Option(None, help=f"{registry_help(SCHEDULERS)}. [default: {DEFAULTS.train.scheduler}]"),
    device: Optional[str] = DeviceOption,
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision: FP16 on CUDA, bf16 on CPUs with native bf16 (else FP32). [default: on]"),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", help="NHWC memory layout. [default: off]"),
    seed: Optional[int] = typer.Option(None, help="Random seed. [default: 0]"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="At most this many optimiser steps per epoch."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    keep_resume_state: Optional[bool] = typer.Option(None, "--keep-resume-state/--drop-resume-state", help="After the last epoch, keep last.pt's resume state (optimiser, scheduler, RNGs: ~2/3 of the file with AdamW) or drop it, keeping the weights (a run killed before its last epoch resumes either way). [default: keep]"),
    max_megapixels: Optional[float] = typer.Option(None, "--max-megapixels", help="Refuse image files larger than this before decoding (raise it for gigapixel images; no tiling). [default: 150]"),
    name: Optional[str] = typer.Option(None, help="Run name recorded in the config."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run directory RUN from its last complete epoch (checkpoints/last.pt), with its own config; only --device and --threads may be given with it.", show_default=False),
):
    """Train a model; writes config.toml, checkpoints/, history.csv into the run directory."""
    from segdeploy.core.config import Config, apply_overrides, load_config
    from segdeploy.core.size import parse_size
    from segdeploy.core.validate import check_path
    from segdeploy.training.loop import resume_run
    from segdeploy.training.loop import train as train_run

    flags = {k: v for k, v in locals().items() if k in TRAIN_KEYS or k in ("config", "output", "overwrite", "name")}
    if resume is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in flags.items()
                 if v is not None and not (k == "overwrite" and v is False) and k not in RESUME_MAY_CHANGE]
        if given:
            raise SegdeployError(f"--resume continues {resume} with its own config.toml; drop {', '.join(given)} "
                                 "(only --device and --threads may change)")
        state.update(run_dir=resume, resume=True)
        run = resume_run(resume, device=device, threads=threads)
        console.print(f"[green]done[/]: {run.path} (history.csv, checkpoints/best.pt)")
        return
    cfg = load_config(config) if config else Config()
    flags["size"] = parse_size(size)
    cfg = apply_overrides(cfg, {key: flags[name] for name, key in TRAIN_KEYS.items()})
    if name:
        cfg.name = name
    output = output or Path("runs") / (cfg.name or f"{cfg.data.dataset}-{cfg.model.name}-{cfg.model.encoder}")
    check_path(output, "folder", "--output", must_exist=False)
    state["run_dir"] = output
    run = train_run(cfg, output, overwrite=overwrite)
    console.print(f"[green]done[/]: {run.path} (history.csv, checkpoints/best.pt)")
