"""Several processes, one training run: `torchrun --nproc-per-node N -m segdeploy train ...`.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them every helper here is a no-op, so the
single-process path of train.py is unchanged. `train.batch_size` stays the *global* batch: each rank
takes batch_size / world_size samples of the same shuffled order a single process would use, so a
run on N processes sees the same global batches as a run on one (BatchNorm statistics are synchronised
across ranks too), and the confusion matrices and losses of validation are summed over ranks.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from segdeploy.core.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str) -> DistInfo:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); no-op for one process."""
    if not launched_by_torchrun():
        return DistInfo(device=device)
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"rank {rank} wants cuda:{local_rank} but only "
                              f"{torch.cuda.device_count()} GPUs are visible")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        atexit.register(cleanup)
    if rank != 0:
        from segdeploy.core.progress import console

        console.quiet = True  # logs from rank 0 only
    return DistInfo(rank, world, local_rank, device)


def cleanup() -> None:
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # DDP's reducer must go before its process group: destroyed after it (at interpreter exit), a gloo
        # rank aborts about one exit in four with torch 2.14 ("terminate called without an active exception")
        gc.collect()
        dist.destroy_process_group()


def local_batch_size(global_batch: int, info: DistInfo) -> int:
    if global_batch % info.world_size:
        raise ConfigError(f"batch size {global_batch} is not divisible by the {info.world_size} "
                          "processes: train.batch_size is the global batch")
    return global_batch // info.world_size


class ShardedRandomSampler(torch.utils.data.Sampler[int]):
    """This rank's share of the order `RandomSampler(generator=...)` would give one process.

    Rank r takes positions r, r + W, r + 2W, ... of the permutation, so consecutive local batches of
    size B/W on all ranks together form exactly the single-process global batches of size B.
    """

    def __init__(self, length: int, generator: torch.Generator, info: DistInfo):
        self.length, self.generator, self.info = length, generator, info

    def __len__(self) -> int:
        return self.length // self.info.world_size

    def __iter__(self) -> Iterator[int]:
        # a generator: nothing is drawn before the first item, as with RandomSampler, and the order
        # is RandomSampler's own (it also draws a second, empty permutation once exhausted). One
        # difference: with train.max_steps cutting an epoch short, one process leaves that draw out.
        order = list(torch.utils.data.RandomSampler(range(self.length), generator=self.generator))
        usable = len(self) * self.info.world_size
        yield from order[self.info.rank:usable:self.info.world_size]


class ShardedSequentialSampler(torch.utils.data.Sampler[int]):
    """Validation: every sample exactly once over all ranks (no padding, so sums stay exact)."""

    def __init__(self, length: int, info: DistInfo):
        self.indices = list(range(info.rank, length, info.world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def train_loader_options(length: int, global_batch: int, generator: torch.Generator, info: DistInfo) -> dict:
    """DataLoader keyword arguments for the training split (batching, order, drop_last)."""
    if not info.enabled:
        return {"batch_size": global_batch, "shuffle": True, "generator": generator,
                "drop_last": length > global_batch}
    batch = local_batch_size(global_batch, info)
    # the loader draws its base seed from `generator` before the sampler's permutation, as it does
    # for one process: pass it too, or the two orders differ
    return {"batch_size": batch, "sampler": ShardedRandomSampler(length, generator, info),
            "generator": generator, "drop_last": length // info.world_size > batch}


def val_loader_options(length: int, global_batch: int, info: DistInfo) -> dict:
    if not info.enabled:
        return {"batch_size": global_batch}
    return {"batch_size": max(1, global_batch // info.world_size),
            "sampler": ShardedSequentialSampler(length, info)}


# --------------------------------------------------------------------------- BatchNorm across ranks


class _SumOverRanks(torch.autograd.Function):
    """Sum over ranks, differentiable: the backward sums the incoming gradients over ranks too (what the
    deprecated torch.distributed.nn.functional.all_reduce did; that one made a gloo rank abort at exit)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        summed = tensor.clone()
        dist.all_reduce(summed)
        return summed

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        summed = grad.clone()
        dist.all_reduce(summed)
        return summed


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the global batch on every backend (gloo too).

    torch's SyncBatchNorm runs on GPUs only; this one sums its statistics with a differentiable all_reduce
    (`_SumOverRanks`), whose backward sums the gradients of the statistics over ranks, so with
    DDP's gradient averaging the result is the gradient of the single-process global-batch loss.
    Same parameters and buffers as BatchNorm2d: checkpoints load into a plain model.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        all_reduce = _SumOverRanks.apply
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean[None, :, None, None]
        var = all_reduce(centred.pow(2).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / max(float(n) - 1, 1.0))
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def _convert_batchnorm(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        converted = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats)
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        setattr(module, name, _convert_batchnorm(child))
    return module


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel with synchronised BatchNorm; the model itself for one process."""
    if not info.enabled:
        return model
    if info.device.startswith("cuda"):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[info.device])
    return nn.parallel.DistributedDataParallel(_convert_batchnorm(model))


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------- reductions


def sum_array(values: np.ndarray, info: DistInfo) -> np.ndarray:
    """Element-wise sum over ranks (e.g. confusion matrices); exact for integer counts."""
    if not info.enabled:
        return values
    import torch.distributed as dist

    device = info.device if info.device.startswith("cuda") else "cpu"
    tensor = torch.as_tensor(np.ascontiguousarray(values), device=device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy().astype(values.dtype)


def weighted_mean(value: float, weight: float, info: DistInfo) -> float:
    """Mean of per-rank values weighted by e.g. their sample counts."""
    if not info.enabled:
        return value
    totals = sum_array(np.array([value * weight, weight], np.float64), info)
    return float(totals[0] / max(totals[1], 1e-12))
