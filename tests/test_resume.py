"""Resume: a run killed at any point and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from segdeploy.core import fileio
from segdeploy.cli import app
from segdeploy.core.config import config_to_toml
from segdeploy.core.rundir import RunDir
from segdeploy.training.loop import resume_run, train

REPO = Path(__file__).resolve().parents[1]
RESULT_COLUMNS = ("epoch", "train_loss", "val_loss", "val_miou", "val_mean_dice", "val_pixel_accuracy", "lr")


def resume_config(epochs: int = 3, size: int = 32, images: int = 8):
    """Deterministic on CPU: one thread, fixed seed, no workers; 2 steps per epoch; an average of the weights
    (train.ema_decay), so that a resume restores it too."""
    return tiny_config(data={"size": size, "max_images": images, "synthetic_images": 2 * images + 8},
                       train={"epochs": epochs, "threads": 1, "seed": 3, "batch_size": 4, "ema_decay": 0.9})


def history_rows(run_path: Path) -> list[dict]:
    with open(run_path / "history.csv", newline="") as f:
        return [{k: row[k] for k in RESULT_COLUMNS} for row in csv.DictReader(f)]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_state(a: dict, b: dict) -> None:
    """Weights (and in last.pt, optimiser moments and RNG states) equal bit for bit."""
    assert a.keys() == b.keys()
    assert a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["metrics"]["miou"] == b["metrics"]["miou"]
    assert a["metrics"]["per_class"] == b["metrics"]["per_class"]
    if "optimizer" not in a:  # best.pt: the weights only
        return
    for name in a["train_model"]:  # the trained weights; "model" holds their average
        assert torch.equal(a["train_model"][name], b["train_model"][name]), name
    assert a["ema"]["updates"] == b["ema"]["updates"]
    for key, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][key][name])), name
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert torch.equal(a["rng"]["loader"], b["rng"]["loader"])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted 3-epoch run every resumed run must match."""
    return train(resume_config(), tmp_path_factory.mktemp("resume") / "reference")


def test_best_holds_the_weights_and_last_the_resume_state(reference_run):
    best, last = reference_run.checkpoint("best"), reference_run.checkpoint("last")
    assert set(load(best)) == {"model", "epoch", "config", "class_names", "metrics"}
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "history", "best_miou"} <= set(load(last))
    assert best.stat().st_size < 0.5 * last.stat().st_size  # Adam keeps two moments per weight


def test_the_average_of_the_weights_is_what_was_validated_saved_and_evaluated(reference_run):
    from segdeploy.evaluation.evaluate import evaluate

    last, best = load(reference_run.checkpoint("last")), load(reference_run.checkpoint("best"))
    assert last["ema"]["updates"] == 6  # 3 epochs of 2 steps
    name = "segmentation_head.0.weight"
    assert torch.equal(last["model"][name], last["ema"]["shadow"][name])
    assert not torch.equal(last["model"][name], last["train_model"][name])
    result = evaluate(RunDir.open(reference_run.path))  # torch, best.pt, the val split training validated on
    assert result["miou"] == pytest.approx(best["metrics"]["miou"], abs=1e-6)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, reference_run):
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(config_to_toml(resume_config()))
    run_path = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "segdeploy", "train", "--config", str(config_file),
                             "--output", str(run_path)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run_path / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "first epoch never finished"
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2: its training steps take seconds
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stderr.close()
    killed_at = load(last)["epoch"]
    assert killed_at < 3, "the run finished before it could be killed"
    written = [int(r["epoch"]) for r in history_rows(run_path)] if (run_path / "history.csv").exists() else []
    assert written == list(range(1, len(written) + 1)) and len(written) in (killed_at - 1, killed_at)

    assert not RunDir.open(run_path).is_finished()
    result = CliRunner().invoke(app, ["train", "--resume", str(run_path)])
    assert result.exit_code == 0, result.output
    assert RunDir.open(run_path).is_finished()
    assert f"resuming {run_path} at epoch {killed_at + 1}/3" in result.output

    assert history_rows(run_path) == history_rows(reference_run.path)
    assert [int(r["epoch"]) for r in history_rows(run_path)] == [1, 2, 3]
    assert_same_state(load(run_path / "checkpoints" / "last.pt"), load(reference_run.checkpoint("last")))
    assert_same_state(load(run_path / "checkpoints" / "best.pt"), load(reference_run.checkpoint("best")))
    assert not [p for p in run_path.rglob("*") if fileio.is_temp_file(p)]


class Killed(BaseException):
    """Stands in for SIGKILL in-process: not an Exception, so nothing in segdeploy catches it."""


@pytest.mark.parametrize("crash_at", ["epoch1-step", "epoch2-between-best-and-last", "epoch2-history"])
def test_resume_from_any_crash_point_is_exact(tmp_path, monkeypatch, reference_run, crash_at):
    """Crashes between the writes of one epoch: before any checkpoint, after best.pt but before last.pt,
    after last.pt but before history.csv. A stale temporary file is left, as a real kill would."""
    import segdeploy.training.loop as train_module

    run_path = tmp_path / "crashed"
    real_save, real_history = train_module.save_checkpoint, train_module.write_history
    real_loss = train_module.make_loss

    def stale_temp(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")

    def save_checkpoint(path, state):
        if crash_at == "epoch2-between-best-and-last" and state["epoch"] == 2 and path.name == "last.pt":
            stale_temp(path.parent)
            raise Killed
        real_save(path, state)

    def write_history(path, rows):
        if crash_at == "epoch2-history" and len(rows) == 2:
            raise Killed
        real_history(path, rows)

    def make_loss(cfg):
        loss_fn = real_loss(cfg)
        calls = []

        def crashing(logits, masks):
            calls.append(1)
            if crash_at == "epoch1-step" and len(calls) == 2:
                stale_temp(run_path / "checkpoints")
                raise Killed
            return loss_fn(logits, masks)
        return crashing

    monkeypatch.setattr(train_module, "save_checkpoint", save_checkpoint)
    monkeypatch.setattr(train_module, "write_history", write_history)
    monkeypatch.setattr(train_module, "make_loss", make_loss)
    with pytest.raises(Killed):
        train(resume_config(), run_path)
    monkeypatch.undo()

    if crash_at == "epoch2-between-best-and-last":
        assert load(run_path / "checkpoints" / "last.pt")["epoch"] == 1
    resume_run(run_path)
    assert history_rows(run_path) == history_rows(reference_run.path)
    assert_same_state(load(run_path / "checkpoints" / "last.pt"), load(reference_run.checkpoint("last")))
    assert_same_state(load(run_path / "checkpoints" / "best.pt"), load(reference_run.checkpoint("best")))
    assert not [p for p in run_path.rglob("*") if fileio.is_temp_file(p)]


def test_resume_of_a_finished_run_changes_nothing(tmp_path, reference_run):
    import shutil

    run_path = tmp_path / "done"
    shutil.copytree(reference_run.path, run_path, copy_function=os.link)
    before = {p: fileio.sha256_file(p) for p in run_path.rglob("*") if p.is_file()}
    result = CliRunner().invoke(app, ["train", "--resume", str(run_path)])
    assert result.exit_code == 0, result.output
    assert "already finished its 3 epochs" in result.output
    assert {p: fileio.sha256_file(p) for p in run_path.rglob("*") if p.is_file()} == before


def test_dropped_resume_state_keeps_the_same_weights_in_a_third_of_the_disk(tmp_path, reference_run):
    """--drop-resume-state: the run trains exactly as the reference (earlier epochs' last.pt are complete),
    the finished last.pt holds the weights and history only, eval reads it, and resume has nothing to do."""
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(config_to_toml(resume_config()))
    run_path = tmp_path / "dropped"
    result = CliRunner().invoke(app, ["train", "--config", str(config_file), "--output", str(run_path),
                                      "--drop-resume-state"])
    assert result.exit_code == 0, result.output
    last, reference_last = load(run_path / "checkpoints" / "last.pt"), load(reference_run.checkpoint("last"))
    assert set(last) == {"model", "epoch", "config", "class_names", "metrics", "best_miou", "history", "time_budget"}
    assert_same_state({k: last[k] for k in ("model", "epoch", "metrics")},
                      {k: reference_last[k] for k in ("model", "epoch", "metrics")})
    assert history_rows(run_path) == history_rows(reference_run.path)
    assert [row["epoch"] for row in last["history"]] == [1, 2, 3]
    assert (run_path / "checkpoints" / "last.pt").stat().st_size < 0.5 * reference_run.checkpoint("last").stat().st_size
    assert "keep_resume_state = false" in (run_path / "config.toml").read_text()

    before = {p: fileio.sha256_file(p) for p in run_path.rglob("*") if p.is_file()}
    result = CliRunner().invoke(app, ["train", "--resume", str(run_path)])
    assert result.exit_code == 0, result.output
    assert "already finished its 3 epochs" in result.output
    assert {p: fileio.sha256_file(p) for p in run_path.rglob("*") if p.is_file()} == before
    from segdeploy.models.checkpoint import load_model

    model, _, _ = load_model(RunDir(run_path), "last")  # what the runners and export read
    assert all(torch.equal(v, reference_last["model"][k]) for k, v in model.state_dict().items())
