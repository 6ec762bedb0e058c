"""A flat training loop: data, model, optimiser, epochs; checkpoints and history in the run dir."""

from __future__ import annotations

import csv
import io
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from segdeploy import distributed, fileio
from segdeploy.config import Config, config_to_dict, config_to_toml, copy_config
from segdeploy.datasets import build_dataset
from segdeploy.env import resolve_device
from segdeploy.errors import ConfigError, NonFiniteLossError, SegdeployError
from segdeploy.losses import make_loss
from segdeploy.metrics import confusion_matrix, summarize
from segdeploy.models import build_model, count_parameters, validate_model_config
from segdeploy.progress import console, make_progress
from segdeploy.rundir import RunDir

HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_miou", "val_mean_dice",
                  "val_pixel_accuracy", "lr", "seconds", "peak_gpu_memory_mb"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if cfg.train.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.train.optimizer!r} (known: adamw, adam)")


def make_scheduler(cfg: Config, optimizer, total_steps: int):
    if cfg.train.scheduler == "none":
        return None
    if cfg.train.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    raise ConfigError(f"unknown scheduler {cfg.train.scheduler!r} (known: none, cosine)")


def prepare_run_dir(output: Path, overwrite: bool) -> RunDir:
    run = RunDir(output)
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise SegdeployError(f"run directory {output} already exists and is not empty "
                                 "(use --overwrite to replace it, or another --output)")
        if not (output / "config.toml").is_file():
            raise SegdeployError(f"refusing to overwrite {output}: it is not a run directory")
        shutil.rmtree(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SegdeployError(f"cannot write to output directory {output}: {exc.strerror}") from None
    return run


@torch.no_grad()
def validate(model, loader, loss_fn, num_classes: int, device: str, amp: bool) -> tuple[float, np.ndarray]:
    model.eval()
    cm = np.zeros((num_classes, num_classes), np.int64)
    total_loss, batches = 0.0, 0
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
            logits = model(images)
        total_loss += float(loss_fn(logits, masks))
        batches += 1
        cm += confusion_matrix(masks.cpu().numpy(), logits.argmax(1).cpu().numpy(), num_classes)
    return total_loss / max(batches, 1), cm


def save_checkpoint(path: Path, state: dict) -> None:
    with fileio.atomic_path(path) as tmp:
        torch.save(state, tmp)


def write_history(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_text(path, buffer.getvalue())


def _fmt(value: float | None, digits: int = 5):
    return "" if value is None else round(float(value), digits)


def train(cfg: Config, output: Path, overwrite: bool = False) -> RunDir:
    """Train `cfg` into run directory `output`; returns the run."""
    cfg = copy_config(cfg)
    validate_model_config(cfg.model, cfg.data.size)
    make_loss(cfg.train)
    device = resolve_device(cfg.train.device)
    dist_info = distributed.setup(device)  # torchrun: this rank's device; one process: unchanged
    device = dist_info.device
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)

    train_set = build_dataset(cfg.data, "train")
    val_set = build_dataset(cfg.data, "val")
    num_classes = train_set.num_classes
    if cfg.model.num_classes not in (None, num_classes):
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but dataset "
                          f"{cfg.data.dataset!r} has {num_classes} classes")
    cfg.model.num_classes = num_classes
    cfg.name = cfg.name or output.name

    if dist_info.is_main:
        run = prepare_run_dir(output, overwrite)
        fileio.write_text(run.config_path, config_to_toml(cfg))
    run = RunDir(output)

    model = build_model(cfg.model, num_classes, cfg.data.size).to(device)
    model = distributed.wrap_model(model, dist_info)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    steps_per_epoch = math.ceil(len(train_set) / cfg.train.batch_size)
    if cfg.train.max_steps:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps)
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch * cfg.train.epochs)
    amp = device.startswith("cuda") and cfg.train.amp
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = make_loss(cfg.train)

    generator = torch.Generator().manual_seed(cfg.train.seed)
    train_loader = torch.utils.data.DataLoader(
        train_set, num_workers=cfg.data.workers, pin_memory=device.startswith("cuda"),
        **distributed.train_loader_options(len(train_set), cfg.train.batch_size, generator, dist_info))
    val_loader = torch.utils.data.DataLoader(
        val_set, num_workers=cfg.data.workers,
        **distributed.val_loader_options(len(val_set), cfg.train.batch_size, dist_info))
    console.print(f"[bold]train[/] {cfg.model.name}/{cfg.model.encoder} on {cfg.data.dataset} "
                  f"({len(train_set)} train / {len(val_set)} val, {num_classes} classes, "
                  f"{cfg.data.size}px) on {device}, {count_parameters(model) / 1e6:.2f} M params -> {run.path}")

    history: list[dict] = []
    best_miou = -1.0
    with make_progress() as progress:
        epoch_task = progress.add_task("epochs", total=cfg.train.epochs, info="")
        for epoch in range(1, cfg.train.epochs + 1):
            model.train()
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            step_task = progress.add_task(f"epoch {epoch}", total=steps_per_epoch, info="")
            running, steps = 0.0, 0
            for step, (images, masks) in enumerate(train_loader):
                if step >= steps_per_epoch:
                    break
                images = images.to(device, non_blocking=True)
                masks = masks.to(device, non_blocking=True)
                with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
                    loss = loss_fn(model(images), masks)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss became {float(loss)} at epoch {epoch}, step {step + 1}; "
                        f"last good checkpoint: {run.checkpoint('last')}",
                        hint="lower the learning rate (--lr) or disable AMP (--no-amp)")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None:
                    scheduler.step()
                running += float(loss)
                steps += 1
                progress.update(step_task, advance=1, info=f"loss {running / steps:.4f}")
            val_loss, cm = validate(model, val_loader, loss_fn, num_classes, device, amp)
            if dist_info.enabled:
                val_loss = distributed.weighted_mean(val_loss, len(val_loader.sampler), dist_info)
                cm = distributed.sum_array(cm, dist_info)
                running = distributed.weighted_mean(running / max(steps, 1), 1.0, dist_info) * max(steps, 1)
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            scores = summarize(cm, val_set.class_names)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None
            history.append({
                "epoch": epoch, "train_loss": _fmt(running / max(steps, 1)), "val_loss": _fmt(val_loss),
                "val_miou": _fmt(scores["miou"]), "val_mean_dice": _fmt(scores["mean_dice"]),
                "val_pixel_accuracy": _fmt(scores["pixel_accuracy"]),
                "lr": optimizer.param_groups[0]["lr"], "seconds": _fmt(seconds, 3),
                "peak_gpu_memory_mb": _fmt(peak, 1),
            })
            state = {
                "model": distributed.unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler else None,
                "scaler": scaler.state_dict(), "epoch": epoch, "config": config_to_dict(cfg),
                "class_names": train_set.class_names, "metrics": scores, "best_miou": max(best_miou, scores["miou"]),
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                        "torch": torch.get_rng_state(), "loader": generator.get_state()},
            }
            if dist_info.is_main:
                save_checkpoint(run.checkpoint("last"), state)
                if scores["miou"] > best_miou or not run.checkpoint("best").exists():
                    save_checkpoint(run.checkpoint("best"), state)
                write_history(run.history, history)
            best_miou = max(best_miou, scores["miou"])
            progress.remove_task(step_task)
            progress.update(epoch_task, advance=1,
                            info=f"val mIoU {scores['miou']:.4f} loss {val_loss:.4f}")
            console.print(f"epoch {epoch}/{cfg.train.epochs}: train loss {running / max(steps, 1):.4f}, "
                          f"val loss {val_loss:.4f}, mIoU {scores['miou']:.4f}, "
                          f"Dice {scores['mean_dice']:.4f}, {seconds:.1f}s")
    return run
