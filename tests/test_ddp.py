"""Training on several processes (torchrun, gloo on CPU) gives what one process gives."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from segdeploy.training import distributed
from segdeploy.core.config import config_to_toml
from segdeploy.training.distributed import DistInfo, ShardedSequentialSampler, train_loader_options
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parent.parent


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def _batches(length: int, batch: int, seed: int, info: DistInfo, epochs: int = 2) -> list[list[int]]:
    dataset = torch.utils.data.TensorDataset(torch.arange(length))
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, **train_loader_options(length, batch, generator, info))
    return [[int(i) for i in b[0]] for _ in range(epochs) for b in loader]


@pytest.mark.parametrize("length", [20, 23])
def test_ranks_together_see_the_single_process_global_batches(length):
    single = _batches(length, 8, seed=5, info=DistInfo())
    ranks = [_batches(length, 8, seed=5, info=DistInfo(rank=r, world_size=2)) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 4  # 2 full global batches per epoch
    for step, batch in enumerate(single):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
        assert len(ranks[0][step]) == len(ranks[1][step]) == 4
    assert single[0] != single[2]  # a new order every epoch


def test_validation_shards_cover_every_sample_once():
    shards = [list(ShardedSequentialSampler(11, DistInfo(rank=r, world_size=3))) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))


def test_global_batch_must_divide():
    with pytest.raises(Exception, match="not divisible by the 2 processes"):
        distributed.local_batch_size(5, DistInfo(world_size=2))


def test_global_batchnorm_gradients_equal_single_process(tmp_path):
    """float64, 2 gloo ranks with 3 + 3 samples vs one process with 6: same gradients and statistics."""
    script = tmp_path / "bn.py"
    script.write_text(textwrap.dedent("""
        import sys, torch
        from torch import nn
        from segdeploy.training import distributed
        torch.set_default_dtype(torch.float64)
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
        x = torch.randn(6, 3, 8, 8); y = torch.randint(0, 2, (6, 8, 8))
        info = distributed.setup("cpu")
        model = distributed.wrap_model(net, info)
        loss = nn.functional.cross_entropy(model(x[info.rank::2]), y[info.rank::2])
        loss.backward()
        inner = distributed.unwrap(model)
        if info.is_main:
            torch.save({"grads": [p.grad for p in inner.parameters()], "state": inner.state_dict()}, sys.argv[1])
        del model  # the DDP wrapper goes before the process group (see distributed.cleanup)
        distributed.cleanup()
    """))
    result = _torchrun(tmp_path, str(script), str(tmp_path / "ddp.pt"))
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt")

    from torch import nn

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
        x = torch.randn(6, 3, 8, 8)
        y = torch.randint(0, 2, (6, 8, 8))
        order = [0, 2, 4, 1, 3, 5]  # rank 0 took 0,2,4 and rank 1 took 1,3,5
        nn.functional.cross_entropy(net(x[order]), y[order]).backward()
    finally:
        torch.set_default_dtype(previous)
    for single, multi in zip([p.grad for p in net.parameters()], ddp["grads"]):
        torch.testing.assert_close(multi, single, rtol=1e-9, atol=1e-12)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(ddp["state"][key], value, rtol=1e-9, atol=1e-12)


def _history(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_torchrun_two_gloo_processes_match_one_process(tmp_path):
    from segdeploy.core.rundir import RunDir
    from segdeploy.models.checkpoint import load_model
    from segdeploy.training.loop import train

    # 16 images, global batch 8, one epoch. No augmentation: crops pad with void, and a rank's loss is the mean
    # over its own labelled pixels, so ranks with different void counts average differently (README, Several GPUs)
    cfg = tiny_config(train={"lr": 1e-4, "threads": 1}, data={"augment": "none"})
    (tmp_path / "tiny.toml").write_text(config_to_toml(cfg))
    single = train(cfg, tmp_path / "single")
    result = _torchrun(tmp_path, "-m", "segdeploy", "train", "--config", "tiny.toml", "--output", "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 1/1") == 1  # logs from rank 0 only

    one, two = _history(single.history)[-1], _history(tmp_path / "ddp" / "history.csv")[-1]
    assert float(two["train_loss"]) == pytest.approx(float(one["train_loss"]), rel=2e-3)
    assert float(two["val_loss"]) == pytest.approx(float(one["val_loss"]), rel=1e-2)
    for key in ("val_miou", "val_mean_dice", "val_pixel_accuracy"):
        assert float(two[key]) == pytest.approx(float(one[key]), abs=5e-3), key
    model, loaded_cfg, _ = load_model(RunDir(tmp_path / "ddp"))  # a plain model loads the checkpoint
    assert loaded_cfg.train.batch_size == 8
    assert all(type(m) is not distributed.GlobalBatchNorm2d for m in model.modules())
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["checkpoints", "config.toml", "curves.png", "history.csv"]
