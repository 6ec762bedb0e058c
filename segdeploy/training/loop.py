"""A flat training loop: data, model, optimiser, epochs; checkpoints and history in the run directory."""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segdeploy.core.config import Config, config_to_dict, copy_config
from segdeploy.core.env import resolve_device
from segdeploy.core.errors import ConfigError, NonFiniteLossError, OutOfMemory, first_line, is_out_of_memory
from segdeploy.core.progress import console, make_progress
from segdeploy.core.rundir import RunDir
from segdeploy.core.size import size_label
from segdeploy.core.threads import torch_threads
from segdeploy.data.dataset import SegDataset
from segdeploy.data.metrics import summarize
from segdeploy.data.preprocess import VOID_LABEL
from segdeploy.data.registry import build_dataset
from segdeploy.models.registry import build_model, check_weights_file, count_parameters, validate_model_config
from segdeploy.training import distributed
from segdeploy.training.budget import TimeBudget, fit_schedule
from segdeploy.training.curves import plot_learning_curves
from segdeploy.training.ema import WeightEma
from segdeploy.training.feature_cache import prepare_feature_cache
from segdeploy.training.losses import make_loss
from segdeploy.training.resume import (last_good_checkpoint, load_resume_state, nonfinite_tensor,
                                       save_checkpoint, write_history)
from segdeploy.training.optimizers import make_optimizer, make_scheduler
from segdeploy.training.setup import autocast_dtype, check_train_numbers, open_run_dir, seed_everything
from segdeploy.training.validation import autocast_for, to_device, validate


@dataclass
class Training:
    """Everything the epochs share: set up once by `_setup`, advanced by `_train_epoch` / `_end_epoch`."""

    cfg: Config
    run: RunDir
    device: str
    dist: Any
    model: torch.nn.Module  # what is checkpointed (never DDP-wrapped)
    net: torch.nn.Module  # what runs on batches: the model, or its head on cached features; DDP under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: Any
    train_loader: Any
    val_loader: Any
    generator: torch.Generator
    class_names: list[str]
    steps_per_epoch: int
    amp_dtype: torch.dtype | None  # autocast: float16 on CUDA, bfloat16 on CPUs that support it, None: FP32
    channels_last: bool
    epochs: int  # the epochs planned: train.epochs, or what the time budget fitted
    budget: TimeBudget | None  # train --time
    history: list[dict] = field(default_factory=list)
    best_miou: float = -1.0
    empty_batches: int = 0  # training batches of the current epoch without a labelled pixel (loss 0)
    ema: WeightEma | None = None  # train.ema_decay: the averaged weights, validated and saved as "model"


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


def train(cfg: Config, output: Path, overwrite: bool = False, resume: bool = False) -> RunDir:
    """Train `cfg` into run directory `output`; returns the run. `resume`: see `resume_run`."""
    with contextlib.ExitStack() as lock:  # the run directory stays locked while training writes it
        lock.enter_context(torch_threads(cfg.train.threads))  # torch's threads as they were, afterwards
        try:
            return _train(_setup(copy_config(cfg), Path(output), overwrite, resume, lock), resume)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            size, batch = size_label(cfg.data.size), cfg.train.batch_size
            raise OutOfMemory(f"out of memory training {cfg.model.name}/{cfg.model.encoder} at {size}px "
                              f"with batch size {batch} ({first_line(exc)[:160]})",
                              hint=f"lower --batch-size (now {batch}) or --size (now {size})") from None


def _train(state: Training, resume: bool) -> RunDir:
    start_epoch = 1
    if resume:
        state.history, state.best_miou, start_epoch, budget = load_resume_state(
            state.run, state.cfg, state.model, state.optimizer, state.scheduler, state.scaler, state.generator,
            state.ema)
        write_history(state.run.history, state.history)
        if state.budget:  # the plan and the time spent so far; a budget that had stopped the run stays stopped
            state.budget.restore(budget)
            state.epochs = state.budget.epochs if budget else state.epochs
            state.epochs = start_epoch - 1 if state.budget.stop_reason else state.epochs
        epochs = state.epochs
        console.print(f"resuming {state.run.path} at epoch {start_epoch}/{epochs}" if start_epoch <= epochs
                      else f"{state.run.path} already finished its {epochs} epochs: nothing to resume")
    with make_progress() as progress:
        epoch_task = progress.add_task("epochs", total=state.epochs, completed=start_epoch - 1, info="")
        if state.budget:
            state.budget.start()
        epoch = start_epoch
        while epoch <= state.epochs:  # a time budget refits state.epochs after every epoch
            started = time.perf_counter()
            train_loss, steps = _train_epoch(state, epoch, progress)
            scores, val_loss = _end_epoch(state, epoch, train_loss, steps, started)
            progress.update(epoch_task, total=state.epochs, advance=1,
                            info=f"val mIoU {scores['miou']:.4f} loss {val_loss:.4f}")
            epoch += 1
    return state.run


def _setup(cfg: Config, output: Path, overwrite: bool, resume: bool, lock: contextlib.ExitStack) -> Training:
    validate_model_config(cfg.model, cfg.data.size)
    check_train_numbers(cfg)
    check_weights_file(cfg.model)
    loss_fn = make_loss(cfg.train)
    dist = distributed.setup(resolve_device(cfg.train.device))  # torchrun: this rank's device
    device = dist.device
    seed_everything(cfg.train.seed)
    train_set, val_set = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")
    if cfg.model.num_classes not in (None, train_set.num_classes):
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but dataset "
                          f"{cfg.data.dataset!r} has {train_set.num_classes} classes")
    cfg.model.num_classes = train_set.num_classes
    cfg.name = cfg.name or output.name
    run = open_run_dir(cfg, output, overwrite, resume, dist.is_main, lock)
    model = build_model(cfg.model, train_set.num_classes, cfg.data.size).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Frozen encoders (sam2): `net` runs the head on cached features, per rank under torchrun too.
    net, train_data, val_data, _ = prepare_feature_cache(model, cfg, train_set, val_set, device, run.path)
    net = distributed.wrap_model(net, dist)
    optimizer = make_optimizer(cfg.train, [p for p in model.parameters() if p.requires_grad])
    steps = math.ceil(len(train_set) / cfg.train.batch_size)
    steps = min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps
    generator = torch.Generator().manual_seed(cfg.train.seed)
    amp_dtype = autocast_dtype(device, cfg.train.amp)
    state = Training(
        cfg, run, device, dist, model, net, optimizer, make_scheduler(cfg.train, optimizer, steps * cfg.train.epochs),
        torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16), loss_fn,
        torch.utils.data.DataLoader(train_data, num_workers=cfg.data.workers, pin_memory=device.startswith("cuda"),
                                    **distributed.train_loader_options(len(train_data), cfg.train.batch_size,
                                                                       generator, dist)),
        torch.utils.data.DataLoader(val_data, num_workers=cfg.data.workers,
                                    **distributed.val_loader_options(len(val_data), cfg.train.batch_size, dist)),
        generator, train_set.class_names, steps, amp_dtype, cfg.train.channels_last, cfg.train.epochs,
        TimeBudget.from_config(cfg.train), ema=WeightEma(model, cfg.train.ema_decay) if cfg.train.ema_decay else None)
    console.print(f"[bold]train[/] {cfg.model.name}/{cfg.model.encoder} on {cfg.data.dataset} "
                  f"({len(train_set)} train / {len(val_set)} val, {train_set.num_classes} classes, "
                  f"{size_label(cfg.data.size)}px, augment {cfg.data.augment}) on {device} "
                  f"({str(amp_dtype).removeprefix('torch.') if amp_dtype else 'fp32'}"
                  f"{f', EMA {cfg.train.ema_decay:g}' if cfg.train.ema_decay else ''}), "
                  f"{count_parameters(model) / 1e6:.2f} M params -> {run.path}")
    return state


def _train_epoch(state: Training, epoch: int, progress) -> tuple[float, int]:
    """One pass over the training data: (summed loss, optimiser steps)."""
    state.net.train()
    if state.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(state.device)
    task = progress.add_task(f"epoch {epoch}", total=state.steps_per_epoch, info="")
    if isinstance(state.train_loader.dataset, SegDataset):
        state.train_loader.dataset.set_epoch(epoch, state.cfg.train.seed)
    running, steps = 0.0, 0
    empty = torch.zeros((), dtype=torch.int64, device=state.device)
    for step, (images, masks) in enumerate(state.train_loader):
        if step >= state.steps_per_epoch:
            break
        images = to_device(images, state.device, state.channels_last)
        masks = masks.to(state.device, non_blocking=True)
        with autocast_for(state.device, state.amp_dtype):
            loss = state.loss_fn(state.net(images), masks)
        loss_value = loss.item()  # the one host sync per step: finiteness check and running mean
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"loss became {loss_value} at epoch {epoch}, step {step + 1}; {last_good_checkpoint(state.run)}",
                hint="lower the learning rate (--lr) or disable AMP (--no-amp)")
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        if state.scheduler is not None:
            state.scheduler.step()
        if state.ema is not None:
            state.ema.update(state.model)
        running += loss_value
        steps += 1
        empty += (masks == VOID_LABEL).all()
        progress.update(task, advance=1, info=f"loss {running / steps:.4f}")
    progress.remove_task(task)
    state.empty_batches = int(empty)
    return running, steps


def _end_epoch(state: Training, epoch: int, running: float, steps: int, started: float) -> tuple[dict, float]:
    """Validate, check for divergence, record the epoch and write the checkpoints and history."""
    cfg, dist = state.cfg, state.dist
    with state.ema.applied(state.model) if state.ema else contextlib.nullcontext():
        val_loss, cm = validate(state.net, state.val_loader, state.loss_fn, len(state.class_names), state.device,
                                state.amp_dtype, state.channels_last)
    if dist.enabled:
        val_loss = distributed.weighted_mean(val_loss, len(state.val_loader.sampler), dist)
        cm = distributed.sum_array(cm, dist)
        running = distributed.weighted_mean(running / max(steps, 1), 1.0, dist) * max(steps, 1)
        state.empty_batches = int(distributed.sum_array(np.array([state.empty_batches]), dist)[0])
    bad_tensor = nonfinite_tensor(state.model)
    if bad_tensor or not math.isfinite(val_loss):
        what = f"weight {bad_tensor}" if bad_tensor else f"validation loss ({val_loss})"
        raise NonFiniteLossError(f"{what} became non-finite at the end of epoch {epoch}, step {steps}; "
                                 f"{last_good_checkpoint(state.run)}",
                                 hint="lower the learning rate (--lr) or disable AMP (--no-amp)")
    if state.device.startswith("cuda"):
        torch.cuda.synchronize(state.device)
    seconds = time.perf_counter() - started
    scores = summarize(cm, state.class_names)
    peak = torch.cuda.max_memory_allocated(state.device) / 2**20 if state.device.startswith("cuda") else None
    if state.budget:  # how many epochs fit now; the LR schedule ends at the last of them
        state.epochs = fit_schedule(state.budget, cfg.train, state.scheduler, state.steps_per_epoch, epoch,
                                    lambda s: distributed.weighted_mean(s, 1.0, dist) if dist.enabled else s)
    state.history.append({
        "epoch": epoch, "train_loss": _fmt(running / max(steps, 1)), "val_loss": _fmt(val_loss),
        "val_miou": _fmt(scores["miou"]), "val_mean_dice": _fmt(scores["mean_dice"]),
        "val_pixel_accuracy": _fmt(scores["pixel_accuracy"]), "lr": state.optimizer.param_groups[0]["lr"],
        "seconds": _fmt(seconds, 3), "peak_gpu_memory_mb": _fmt(peak, 1), "empty_batches": state.empty_batches,
        "planned_epochs": state.epochs})
    if dist.is_main:
        _save(state, epoch, scores)
    state.best_miou = max(state.best_miou, scores["miou"])
    if state.empty_batches:
        console.print(f"epoch {epoch}: {state.empty_batches} training batch(es) had no labelled pixel "
                      "(all void): they count as loss 0 (history.csv: empty_batches)", highlight=False,
                      soft_wrap=True)
    console.print(f"epoch {epoch}/{state.epochs}: train loss {running / max(steps, 1):.4f}, val loss "
                  f"{val_loss:.4f}, mIoU {scores['miou']:.4f}, Dice {scores['mean_dice']:.4f}, {seconds:.1f}s")
    return scores, val_loss


def _save(state: Training, epoch: int, scores: dict) -> None:
    """best.pt: the weights and what eval, export and the runners read (config, class names, the epoch's
    scores; with train.ema_decay the averaged weights, which were validated); last.pt: that and the full resume
    state (optimiser, scheduler, scaler, RNGs, history, and the trained weights and EMA state)."""
    model = state.ema.averaged_state(state.model) if state.ema else state.model.state_dict()
    weights = {"model": model, "epoch": epoch, "config": config_to_dict(state.cfg),
               "class_names": state.class_names, "metrics": scores}
    checkpoint = {
        **weights, "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict() if state.scheduler else None,
        "scaler": state.scaler.state_dict(), "best_miou": max(state.best_miou, scores["miou"]),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                "loader": state.generator.get_state()},
        "history": list(state.history), "time_budget": state.budget.state() if state.budget else None,
        **({"train_model": state.model.state_dict(), "ema": state.ema.state_dict()} if state.ema else {}),
    }
    if state.device.startswith("cuda"):
        checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    if epoch >= state.epochs and not state.cfg.train.keep_resume_state:  # the last planned epoch
        checkpoint = {**weights, **{k: checkpoint[k] for k in ("best_miou", "history", "time_budget")}}
    run = state.run
    # best before last: a kill between the two resumes from the previous last.pt and redoes this epoch,
    # so best.pt can never miss an epoch that last.pt already counts.
    if scores["miou"] > state.best_miou or not run.checkpoint("best").exists():
        save_checkpoint(run.checkpoint("best"), weights)
    save_checkpoint(run.checkpoint("last"), checkpoint)
    write_history(run.history, state.history)
    if state.budget:
        state.budget.write(run.time_budget, epoch, state.optimizer.param_groups[0]["lr"])
    plot_learning_curves(state.history, run.curves, title=f"{state.cfg.name}: {state.cfg.model.name}/"
                         f"{state.cfg.model.encoder} on {state.cfg.data.dataset}")


def _fmt(value: float | None, digits: int = 5):
    return "" if value is None else round(float(value), digits)
