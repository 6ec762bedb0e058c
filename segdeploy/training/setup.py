"""What a training run needs before its first step: seeds, optimiser, schedule, checked numbers, run directory."""

from __future__ import annotations

import contextlib
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from segdeploy.core import fileio
from segdeploy.core.config import Config, config_to_toml
from segdeploy.core.errors import SegdeployError
from segdeploy.core.lock import is_lock_file, run_lock
from segdeploy.core.progress import console
from segdeploy.core.rundir import RunDir
from segdeploy.core.validate import validate_config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX), where oneDNN runs bf16 convolutions faster than FP32."""
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def autocast_dtype(device: str, amp: bool) -> torch.dtype | None:
    """What `train.amp` means on this device: FP16 autocast on CUDA, bf16 on a CPU with native bf16, else FP32."""
    if not amp:
        return None
    if device.startswith("cuda"):
        return torch.float16
    if cpu_has_bf16():
        return torch.bfloat16
    from segdeploy.core.progress import console

    console.print("amp: this CPU has no native bf16 (AVX512-BF16 or AMX), so training stays in FP32")
    return None


def check_train_numbers(cfg: Config) -> None:
    """Values of the right type but outside their range (e.g. --batch-size 0) are one-line errors too."""
    from segdeploy.data.registry import check_classes
    from segdeploy.training.losses import LOSSES
    from segdeploy.training.optimizers import OPTIMIZERS, SCHEDULERS

    validate_config(cfg, ("model", "data", "train"))
    OPTIMIZERS[cfg.train.optimizer], SCHEDULERS[cfg.train.scheduler], LOSSES[cfg.train.loss]  # unknown names
    check_classes(cfg.data)


def make_output_dir(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SegdeployError(f"cannot write to output directory {output}: {exc.strerror}") from None


def prepare_run_dir(output: Path, overwrite: bool) -> RunDir:
    """Empty `output` for a new run; the caller holds its lock. A run whose training wrote no checkpoint
    (it failed or was stopped in its first epoch) is replaced without --overwrite: nothing is lost."""
    run = RunDir(output)
    contents = [p for p in output.iterdir() if not is_lock_file(p)]
    if not contents:
        return run
    if not run.config_path.is_file():
        raise SegdeployError(f"refusing to overwrite {output}: it is not a run directory" if overwrite else
                             f"run directory {output} already exists and is not empty "
                             "(use --overwrite to replace it, or another --output)")
    if not any(run.checkpoint(which).exists() for which in ("best", "last")):
        console.print(f"[yellow]note[/]: replacing {output}: its earlier training wrote no checkpoint",
                      highlight=False, soft_wrap=True)
    elif not overwrite:
        raise SegdeployError(f"run directory {output} already exists and is not empty "
                             "(use --overwrite to replace it, or another --output)")
    for path in contents:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return run


def check_writable(output: Path) -> None:
    try:
        probe = output / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SegdeployError(f"cannot write to run directory {output}: {exc.strerror}") from None


def open_run_dir(cfg: Config, output: Path, overwrite: bool, resume: bool, is_main: bool,
                 lock: contextlib.ExitStack) -> RunDir:
    """The run directory, locked in `lock` (by the main rank): a new one emptied and given config.toml,
    or the one `resume` continues."""
    if is_main:
        if resume:
            lock.enter_context(run_lock(RunDir.open(output).path, "train --resume"))
            check_writable(output)
        else:
            make_output_dir(output)
            lock.enter_context(run_lock(output, "train"))
            prepare_run_dir(output, overwrite)
            fileio.write_text(RunDir(output).config_path, config_to_toml(cfg))
    return RunDir(output)
