"""Training on a CPU: bf16 autocast where the CPU has native bf16 (FP32 otherwise, said once),
channels_last, and learning curves rewritten after every epoch."""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import tiny_config
from segdeploy.core.threads import torch_threads
from segdeploy.training import loop, setup
from segdeploy.training.loop import train


def test_amp_on_cpu_means_bf16_only_where_the_cpu_has_it(monkeypatch, capsys):
    assert setup.autocast_dtype("cuda:0", True) == torch.float16
    assert setup.autocast_dtype("cpu", False) is None
    monkeypatch.setattr(setup, "cpu_has_bf16", lambda: True)
    assert setup.autocast_dtype("cpu", True) == torch.bfloat16
    monkeypatch.setattr(setup, "cpu_has_bf16", lambda: False)
    assert setup.autocast_dtype("cpu", True) is None
    assert "no native bf16" in capsys.readouterr().out


def test_bf16_training_runs_its_convolutions_in_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "cpu_has_bf16", lambda: True)  # autocast works on any CPU, only slower
    monkeypatch.setattr(loop, "autocast_dtype", setup.autocast_dtype)
    seen = set()
    original = torch.nn.Conv2d.forward

    def record(self, x):
        out = original(self, x)
        seen.add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "forward", record)
    # 32 px, 4 images: bf16 convolutions are emulated (slow) on CPUs without native bf16, as CI's may be
    run = train(tiny_config(train={"amp": True, "max_steps": 1, "batch_size": 4},
                            data={"augment": "none", "size": 32, "max_images": 4}), tmp_path / "bf16")
    assert torch.bfloat16 in seen
    rows = list(csv.DictReader(run.history.open()))
    assert 0 <= float(rows[0]["val_miou"]) <= 1
    assert run.load_config().train.amp is True


def test_channels_last_gives_the_losses_of_the_default_layout(tmp_path, monkeypatch):
    cfg = tiny_config(train={"max_steps": 2, "threads": 1}, data={"augment": "none"})
    threads_in_epochs, real_epoch = [], loop._train_epoch
    monkeypatch.setattr(loop, "_train_epoch",
                        lambda *args: threads_in_epochs.append(torch.get_num_threads()) or real_epoch(*args))
    with torch_threads(2):  # the process's own count differs from train.threads, even in a 1-thread worker
        plain = train(cfg, tmp_path / "plain")
        cfg.train.channels_last = True
        nhwc = train(cfg, tmp_path / "nhwc")
        after = torch.get_num_threads()
    # train.threads holds while training runs; the process gets its own count back afterwards
    assert threads_in_epochs == [1, 1] and after == 2
    (a,), (b,) = (list(csv.DictReader(r.history.open())) for r in (plain, nhwc))
    assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-4)
    # after two Adam steps at lr 1e-3 the layouts' rounding differences show more in validation
    assert float(b["val_loss"]) == pytest.approx(float(a["val_loss"]), rel=3e-2)


def test_curves_are_rewritten_after_every_epoch(tmp_path, monkeypatch):
    drawn = []
    original = loop.plot_learning_curves
    monkeypatch.setattr(loop, "plot_learning_curves",
                        lambda rows, path, **kw: drawn.append(len(rows)) or original(rows, path, **kw))
    run = train(tiny_config(train={"epochs": 2, "max_steps": 1}), tmp_path / "r")
    assert drawn == [1, 2] and run.curves.read_bytes()[:4] == b"\x89PNG"
