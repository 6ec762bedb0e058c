"""`segdeploy train --time HOURS`: the schedule is fitted to the epochs that fit the wall-clock budget.

Through the real CLI on tiny synthetic data. Most tests drive the budget's one clock (training/budget.py
`_clock`) so that every epoch "takes" 10 s: the epochs that fit are then exact, whatever the load of the
machine; one test runs on the real clock.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.core.rundir import RunDir

TINY = """
[data]
size = 32
max_images = 8
synthetic_images = 24
[train]
batch_size = 4
threads = 1
seed = 3
scheduler = "cosine"
lr = 0.001
"""
STEPS = 2  # 8 training images, batch 4
EPOCH_S = 10.0


def tiny_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def fake_clock(monkeypatch) -> None:
    """The budget reads its clock once at the loop's start and once after every epoch: 10 s per epoch."""
    import segdeploy.training.budget as budget

    ticks = itertools.count(0.0, EPOCH_S)
    monkeypatch.setattr(budget, "_clock", lambda: next(ticks))


def history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def train(*args: str):
    return CliRunner().invoke(app, ["train", *args])


def budget_hours(epochs_that_fit: float) -> float:
    return epochs_that_fit * EPOCH_S / 3600


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """A 35 s budget (3.5 epochs of 10 s) and at most 50 epochs: 3 epochs fit."""
    tmp = tmp_path_factory.mktemp("budget")
    with pytest.MonkeyPatch.context() as monkeypatch:
        fake_clock(monkeypatch)
        result = train("-c", str(tiny_toml(tmp)), "--time", str(budget_hours(3.5)), "--epochs", "50",
                       "--output", str(tmp / "run"))
    assert result.exit_code == 0, result.output
    return tmp / "run", result.output


def test_budget_stops_at_the_epochs_that_fit_and_the_cosine_ends_there(budget_run):
    run, output = budget_run
    rows = history(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["planned_epochs"]) for r in rows] == [3, 3, 3]
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[-1] == 0.0 and lrs[0] > lrs[1] > 0.0
    # after epoch 1 the cosine (over 50 epochs until then) was retargeted to end at epoch 3: CosineAnnealingLR's
    # recursive form then gives lr(t) = lr(t0) (1 + cos(pi t / T)) / (1 + cos(pi t0 / T)), T = 3 epochs
    assert lrs[1] == pytest.approx(lrs[0] * (1 + math.cos(2 * math.pi / 3)) / (1 + math.cos(math.pi / 3)), rel=1e-9)
    assert "time budget 35 s" in output and "the schedule ends at epoch 3" in output
    assert "stopping after epoch 3" in output
    assert "time_hours = " in (run / "config.toml").read_text()


def test_budget_record_says_what_happened(budget_run):
    run, _ = budget_run
    record = json.loads((run / "time_budget.json").read_text())
    assert record["budget_s"] == pytest.approx(35.0)
    assert record["max_epochs"] == 50
    assert (record["planned_epochs"], record["epochs_run"]) == (3, 3)
    assert record["epoch_seconds"] == [EPOCH_S] * 3 and record["elapsed_s"] == pytest.approx(30.0)
    assert record["refits"] == [{"after_epoch": 1, "epochs": 3}]
    assert record["finished"] and record["stop_reason"] == "budget" and record["last_lr"] == 0.0
    assert RunDir(run).is_finished()


def test_a_finished_budget_run_is_not_resumed(budget_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(budget_run[0], run)
    before = (run / "history.csv").read_text()
    result = train("--resume", str(run))
    assert result.exit_code == 0, result.output
    assert "already finished its 3 epochs" in result.output
    assert (run / "history.csv").read_text() == before


def test_the_epochs_cap_binds_before_the_budget(tmp_path, monkeypatch):
    fake_clock(monkeypatch)
    result = train("-c", str(tiny_toml(tmp_path)), "--time", "1", "--epochs", "2", "--output", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    rows = history(tmp_path / "run")
    assert [int(r["planned_epochs"]) for r in rows] == [2, 2] and float(rows[-1]["lr"]) == 0.0
    record = json.loads((tmp_path / "run" / "time_budget.json").read_text())
    assert record["stop_reason"] == "epochs" and record["elapsed_s"] == pytest.approx(20.0)
    assert "the most --epochs allows (2)" in result.output


class Killed(BaseException):
    """Stands in for SIGKILL in-process: not an Exception, so nothing in segdeploy catches it."""


def test_a_killed_budget_run_resumes_with_the_time_it_had_spent(tmp_path, monkeypatch, budget_run):
    import segdeploy.training.loop as loop

    real_history = loop.write_history

    def write_history(path, rows):  # killed after epoch 2's last.pt, before its history.csv
        if len(rows) == 2:
            raise Killed
        real_history(path, rows)

    fake_clock(monkeypatch)
    monkeypatch.setattr(loop, "write_history", write_history)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        CliRunner().invoke(app, ["train", "-c", str(tiny_toml(tmp_path)), "--time", str(budget_hours(3.5)),
                                 "--epochs", "50", "--output", str(run)], catch_exceptions=False)
    monkeypatch.setattr(loop, "write_history", real_history)
    assert not RunDir(run).is_finished()
    assert "resume" in RunDir(run).train_command()
    fake_clock(monkeypatch)  # a new process: its clock starts anew, the 20 s spent come from last.pt
    result = train("--resume", str(run))
    assert result.exit_code == 0, result.output
    assert f"resuming {run} at epoch 3/3" in result.output
    rows, reference = history(run), history(budget_run[0])
    keys = ("epoch", "train_loss", "val_loss", "val_miou", "lr", "planned_epochs")
    assert [{k: r[k] for k in keys} for r in rows] == [{k: r[k] for k in keys} for r in reference]
    record = json.loads((run / "time_budget.json").read_text())
    assert record["epoch_seconds"] == [EPOCH_S] * 3 and record["stop_reason"] == "budget"


def test_time_with_resume_is_refused(budget_run):
    result = train("--resume", str(budget_run[0]), "--time", "1")
    assert result.exit_code != 0 and "drop --time" in result.output


@pytest.mark.parametrize("value", ["0", "-0.5"])
def test_a_budget_that_is_not_positive_is_a_one_line_error(tmp_path, value):
    result = train("--time", value, "--output", str(tmp_path / "run"))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "train.time_hours must be a positive number" in lines[0], result.output
    assert not (tmp_path / "run").exists()


def test_a_budget_of_zero_in_toml_gets_the_same_message(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(TINY + "time_hours = 0\n")
    result = train("-c", str(config), "--output", str(tmp_path / "run"))
    assert result.exit_code == 2 and "train.time_hours must be a positive number, got 0" in result.output


def test_budget_on_the_real_clock(tmp_path):
    """About four tiny epochs' worth of wall clock: training stops on the budget, long before --epochs."""
    result = train("-c", str(tiny_toml(tmp_path)), "--time", str(4.0 / 3600), "--epochs", "200",
                   "--output", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "time_budget.json").read_text())
    rows = history(tmp_path / "run")
    assert record["stop_reason"] == "budget" and 1 <= record["epochs_run"] == len(rows) < 200
    assert record["elapsed_s"] == pytest.approx(sum(record["epoch_seconds"]), abs=0.01)
    # the last epoch started only when the estimate said it fits; it may run over by its own variation
    assert record["elapsed_s"] <= record["budget_s"] + 2 * max(record["epoch_seconds"])
    assert int(rows[-1]["planned_epochs"]) == len(rows)
