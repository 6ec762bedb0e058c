"""`train --time HOURS` (`train.time_hours`): a wall-clock budget for the epoch loop, as Ultralytics' `time=`.

The clock runs from the first epoch's start (setup, dataset caching and model building before it are not
counted) over training, validation and checkpoint writing. After every epoch the epochs that still fit are
estimated from the mean wall time per epoch so far; the plan becomes the current epoch plus those, never more
than `train.epochs` (the cap: a larger --epochs lets the budget alone decide), and the learning-rate schedule
is retargeted to end at the plan's last epoch. When no further epoch fits, training stops after the current
one; so does a run that reached the end of its plan (its LR has annealed; a longer plan would add epochs at
the final LR). At least one epoch always runs. A resumed run keeps its budget: the wall time of the epochs before the
interruption counts, the time between interruption and resumption does not.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from segdeploy.core import fileio
from segdeploy.core.config import TrainConfig
from segdeploy.core.progress import console
from segdeploy.training.optimizers import retarget_scheduler

_clock: Callable[[], float] = time.perf_counter  # the budget's one clock (tests replace it)


@dataclass
class TimeBudget:
    hours: float
    cap: int  # train.epochs: the most epochs the budget may fit
    epochs: int  # the plan: the epoch the schedule ends at
    elapsed_s: float = 0.0  # wall time of the epoch loop so far, earlier processes of a resumed run included
    epoch_seconds: list[float] = field(default_factory=list)  # each epoch, with the previous one's checkpoints
    stop_reason: str | None = None  # "budget" (no further epoch fits), "epochs" (the cap), None: still training
    refits: list[dict] = field(default_factory=list)  # {"after_epoch", "epochs"}: every change of the plan
    _mark: float | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "TimeBudget | None":
        return cls(cfg.time_hours, cfg.epochs, cfg.epochs) if cfg.time_hours else None

    @property
    def seconds(self) -> float:
        return self.hours * 3600.0

    def state(self) -> dict:
        """What last.pt keeps, so that a resumed run goes on with the same plan and the time already spent."""
        return {k: v for k, v in asdict(self).items() if k != "_mark"}

    def restore(self, state: dict | None) -> None:
        for key, value in (state or {}).items():
            if key in ("epochs", "elapsed_s", "epoch_seconds", "stop_reason", "refits"):
                setattr(self, key, value)

    def start(self) -> None:
        self._mark = _clock()

    def refit(self, epoch: int, sync: Callable[[float], float] = float) -> int:
        """After `epoch`: record its wall time and return the new plan (== epoch: stop after it). `sync`
        makes every rank of a distributed run decide alike (the mean of their times)."""
        now = _clock()
        seconds = sync(now - self._mark)
        self._mark = now
        self.elapsed_s += seconds
        self.epoch_seconds.append(round(seconds, 3))
        per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
        left = self.seconds - self.elapsed_s
        more = max(0, math.floor(left / per_epoch)) if per_epoch > 0 else self.cap
        # the schedule's end, once reached, is the end: an LR annealed to its end stays there
        planned = epoch if epoch >= self.epochs else max(epoch, min(self.cap, epoch + more))
        if planned != self.epochs:
            self.refits.append({"after_epoch": epoch, "epochs": planned})
        if planned == epoch:
            self.stop_reason = "epochs" if epoch >= self.cap else "budget"
        self.epochs = planned
        self._say(epoch, per_epoch, left, more)
        return planned

    def _say(self, epoch: int, per_epoch: float, left: float, more: int) -> None:
        head = f"time budget {self.seconds:.0f} s: {self.elapsed_s:.1f} s used, {per_epoch:.1f} s per epoch"
        if self.stop_reason == "budget":
            tail = (f"stopping after epoch {epoch}: another epoch would not fit in the {max(left, 0):.1f} s left"
                    if more == 0 else f"stopping after epoch {epoch}, where the schedule fitted earlier ends "
                                      f"({left:.1f} s left)")
        elif self.stop_reason == "epochs":
            tail = f"stopping after epoch {epoch}, the most --epochs allows ({self.cap})"
        else:
            tail = f"the schedule ends at epoch {self.epochs}" + (f" (at most --epochs {self.cap})"
                                                                   if self.epochs == self.cap else "")
        console.print(f"{head}; {tail}", highlight=False, soft_wrap=True)

    def record(self, epochs_run: int, lr: float) -> dict:
        """RUN/time_budget.json: the budget, what it fitted and what the epochs took."""
        return {"time_hours": self.hours, "budget_s": self.seconds, "max_epochs": self.cap,
                "planned_epochs": self.epochs, "epochs_run": epochs_run, "elapsed_s": round(self.elapsed_s, 3),
                "mean_epoch_s": round(self.elapsed_s / max(len(self.epoch_seconds), 1), 3),
                "epoch_seconds": self.epoch_seconds, "refits": self.refits,
                "finished": self.stop_reason is not None, "stop_reason": self.stop_reason, "last_lr": lr,
                "clock": "wall time from the first epoch's start: training, validation and checkpoints (setup "
                         "before it not counted; a resumed run adds the epochs before its interruption)"}

    def write(self, path: Path, epochs_run: int, lr: float) -> None:
        fileio.write_json(path, self.record(epochs_run, lr))


def fit_schedule(budget: TimeBudget, cfg: TrainConfig, scheduler, steps_per_epoch: int, epoch: int,
                 sync: Callable[[float], float] = float) -> int:
    """Refit the plan after `epoch` and end the LR schedule at its last epoch; returns the plan."""
    before = budget.epochs
    planned = budget.refit(epoch, sync)
    if planned != before and planned > epoch:
        retarget_scheduler(cfg, scheduler, planned * steps_per_epoch)
    return planned
