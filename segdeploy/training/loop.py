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

from segdeploy.training import distributed

from segdeploy.core import fileio
from segdeploy.core.config import Config, config_to_dict, config_to_toml, copy_config
from segdeploy.data.dataset import build_dataset
from segdeploy.core.env import resolve_device
from segdeploy.core.errors import ConfigError, NonFiniteLossError, SegdeployError
from segdeploy.training.feature_cache import prepare_feature_cache
from segdeploy.training.losses import make_loss
from segdeploy.data.metrics import confusion_matrix, summarize
from segdeploy.models.registry import build_model, count_parameters, validate_model_config
from segdeploy.core.progress import console, make_progress
from segdeploy.core.rundir import RunDir, load_checkpoint

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


def check_train_numbers(cfg: Config) -> None:
    """Values of the right type but outside their range (e.g. --batch-size 0) are one-line errors too."""
    t = cfg.train
    for key, value, minimum in (("epochs", t.epochs, 1), ("batch_size", t.batch_size, 1),
                                ("max_steps", t.max_steps, 1), ("threads", t.threads, 1)):
        if value is not None and value < minimum:
            raise ConfigError(f"train.{key} must be at least {minimum}, got {value}")
    if not (math.isfinite(t.lr) and t.lr > 0):
        raise ConfigError(f"train.lr must be a positive number, got {t.lr}")
    if t.optimizer not in ("adamw", "adam"):
        raise ConfigError(f"unknown optimizer {t.optimizer!r} (known: adamw, adam)")
    if t.scheduler not in ("none", "cosine"):
        raise ConfigError(f"unknown scheduler {t.scheduler!r} (known: none, cosine)")
    if not 0 <= t.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}")


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


def check_writable(output: Path) -> None:
    try:
        probe = output / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SegdeployError(f"cannot write to run directory {output}: {exc.strerror}") from None


# Settings that may differ between a run and its resumption: they change speed, not the result.
RESUME_MAY_CHANGE = ("device", "threads")


def _resume_comparable(raw: dict) -> dict:
    raw = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    for key in RESUME_MAY_CHANGE:
        raw.get("train", {}).pop(key, None)
    return raw


def load_resume_state(run: RunDir, cfg: Config, model, optimizer, scheduler, scaler,
                      generator: torch.Generator) -> tuple[list[dict], float, int]:
    """Restore everything the next epoch depends on from checkpoints/last.pt.

    Returns (history rows so far, best val mIoU, first epoch to run). Without last.pt (killed during
    the first epoch) the run starts again at epoch 1, which is what an uninterrupted run did.
    """
    fileio.remove_stale_temps(run.path)
    fileio.remove_stale_temps(run.checkpoints)
    path = run.checkpoint("last")
    if not path.exists():
        return [], -1.0, 1
    ckpt = load_checkpoint(path)
    missing = [k for k in ("optimizer", "epoch", "rng", "history") if k not in ckpt]
    if missing:
        raise SegdeployError(f"{path} cannot be resumed: it lacks {', '.join(missing)} "
                             "(written by an older segdeploy?)")
    if _resume_comparable(ckpt["config"]) != _resume_comparable(config_to_dict(cfg)):
        raise SegdeployError(f"{run.config_path} differs from the config stored in {path}: "
                             "restore config.toml, or start a new run")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SegdeployError(f"{path} does not fit {cfg.model.name}/{cfg.model.encoder} with "
                             f"{cfg.model.num_classes} classes: {first}") from None
    rng = ckpt["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["loader"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return list(ckpt["history"]), float(ckpt["best_miou"]), int(ckpt["epoch"]) + 1


def resume_run(path: str | Path, device: str | None = None, threads: int | None = None) -> RunDir:
    """Continue the run in `path` from its last complete epoch; a finished run is returned as it is.

    Killed at any point (SIGKILL included) and resumed, a run ends with the weights and metrics of an
    uninterrupted run with the same seed (bit-exact on CPU with a fixed thread count).
    """
    run = RunDir.open(path)
    cfg = run.load_config()
    if device is not None:
        cfg.train.device = device
    if threads is not None:
        cfg.train.threads = threads
    return train(cfg, run.path, resume=True)


def _nonfinite_tensor(model) -> str | None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


def _last_good(run: RunDir) -> str:
    path = run.checkpoint("last")
    if path.exists():
        return f"last good checkpoint kept: {path}"
    return "no checkpoint was written yet (it diverged in the first epoch)"


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


def train(cfg: Config, output: Path, overwrite: bool = False, resume: bool = False) -> RunDir:
    """Train `cfg` into run directory `output`; returns the run. `resume`: see `resume_run`."""
    cfg = copy_config(cfg)
    validate_model_config(cfg.model, cfg.data.size)
    check_train_numbers(cfg)
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
        if resume:
            check_writable(RunDir.open(output).path)
        else:
            prepare_run_dir(output, overwrite)
            fileio.write_text(RunDir(output).config_path, config_to_toml(cfg))
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

    # Frozen encoders (sam2): `net` runs the head on cached features; `model` is what gets checkpointed.
    net, train_data, val_data, _ = prepare_feature_cache(model, cfg, train_set, val_set, device, run.path)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    train_loader = torch.utils.data.DataLoader(
        train_data, num_workers=cfg.data.workers, pin_memory=device.startswith("cuda"),
        **distributed.train_loader_options(len(train_data), cfg.train.batch_size, generator, dist_info))
    val_loader = torch.utils.data.DataLoader(
        val_data, num_workers=cfg.data.workers,
        **distributed.val_loader_options(len(val_data), cfg.train.batch_size, dist_info))
    console.print(f"[bold]train[/] {cfg.model.name}/{cfg.model.encoder} on {cfg.data.dataset} "
                  f"({len(train_set)} train / {len(val_set)} val, {num_classes} classes, "
                  f"{cfg.data.size}px) on {device}, {count_parameters(model) / 1e6:.2f} M params -> {run.path}")

    history: list[dict] = []
    best_miou = -1.0
    start_epoch = 1
    if resume:
        history, best_miou, start_epoch = load_resume_state(run, cfg, distributed.unwrap(model), optimizer, scheduler, scaler,
                                                            generator)
        write_history(run.history, history)
        console.print(f"resuming {run.path} at epoch {start_epoch}/{cfg.train.epochs}" if start_epoch <= cfg.train.epochs
                      else f"{run.path} already finished its {cfg.train.epochs} epochs: nothing to resume")
    with make_progress() as progress:
        epoch_task = progress.add_task("epochs", total=cfg.train.epochs, completed=start_epoch - 1, info="")
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            net.train()
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
                    loss = loss_fn(net(images), masks)
                loss_value = loss.item()  # the one host sync per step: finiteness check and running mean
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(
                        f"loss became {loss_value} at epoch {epoch}, step {step + 1}; {_last_good(run)}",
                        hint="lower the learning rate (--lr) or disable AMP (--no-amp)")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None:
                    scheduler.step()
                running += loss_value
                steps += 1
                progress.update(step_task, advance=1, info=f"loss {running / steps:.4f}")
            val_loss, cm = validate(net, val_loader, loss_fn, num_classes, device, amp)
            if dist_info.enabled:
                val_loss = distributed.weighted_mean(val_loss, len(val_loader.sampler), dist_info)
                cm = distributed.sum_array(cm, dist_info)
                running = distributed.weighted_mean(running / max(steps, 1), 1.0, dist_info) * max(steps, 1)
            bad_tensor = _nonfinite_tensor(model)
            if bad_tensor or not math.isfinite(val_loss):
                what = f"weight {bad_tensor}" if bad_tensor else f"validation loss ({val_loss})"
                raise NonFiniteLossError(
                    f"{what} became non-finite at the end of epoch {epoch}, step {steps}; {_last_good(run)}",
                    hint="lower the learning rate (--lr) or disable AMP (--no-amp)")
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
                "history": list(history),
            }
            if device.startswith("cuda"):
                state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
            if dist_info.is_main:
                # best before last: a kill between the two resumes from the previous last.pt and redoes
                # this epoch, so best.pt can never miss an epoch that last.pt already counts.
                if scores["miou"] > best_miou or not run.checkpoint("best").exists():
                    save_checkpoint(run.checkpoint("best"), state)
                save_checkpoint(run.checkpoint("last"), state)
                write_history(run.history, history)
            best_miou = max(best_miou, scores["miou"])
            progress.remove_task(step_task)
            progress.update(epoch_task, advance=1,
                            info=f"val mIoU {scores['miou']:.4f} loss {val_loss:.4f}")
            console.print(f"epoch {epoch}/{cfg.train.epochs}: train loss {running / max(steps, 1):.4f}, "
                          f"val loss {val_loss:.4f}, mIoU {scores['miou']:.4f}, "
                          f"Dice {scores['mean_dice']:.4f}, {seconds:.1f}s")
    return run
