"""A run directory: what `train` creates and every later command reads and adds to.

RunDir is the one place that knows the layout and reads the run's artefacts (config.toml, history.csv,
checkpoints, metrics.json, parity.json, bench.json), so every command reads them the same way.
"""

from __future__ import annotations

import csv
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segdeploy.core import fileio, unit
from segdeploy.core.config import Config, load_config
from segdeploy.core.errors import ConfigError, SegdeployError, StageMissingError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory; a clear error if it is not one."""
        run = cls(Path(path))
        if run.path.exists() and not run.path.is_dir():
            raise StageMissingError(f"{run.path} is a file, not a run directory (give the folder `segdeploy train` wrote)")
        if not run.path.is_dir():
            raise StageMissingError(f"run directory not found: {run.path} "
                                    f"(create one with `segdeploy train --output {run.path}`)")
        if not run.config_path.is_file():
            raise StageMissingError(f"{run.path} is not a run directory: no config.toml "
                                    f"(create one with `segdeploy train --output {run.path}`)")
        unit.recover(run.path)  # a writer killed while committing files that change together
        return run

    # ------------------------------------------------------------------ layout

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, which: str = "best") -> Path:
        return self.checkpoints / f"{which}.pt"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def time_budget(self) -> Path:
        """train --time: the budget, the epochs it fitted and the wall time they took (training/budget.py)."""
        return self.path / "time_budget.json"

    @property
    def curves(self) -> Path:
        """The learning curves, rewritten by train after every epoch."""
        return self.path / "curves.png"

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    def onnx_path(self, precision: str = "fp32", deploy: bool = False) -> Path:
        """model[.precision].onnx: float NCHW in, logits out; with `deploy`, model[.precision].deploy.onnx:
        uint8 NHWC images in, class-index mask out (export/deploy_graph.py)."""
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
        stem = "model" if precision == "fp32" else f"model.{precision}"
        return self.export_dir / f"{stem}{'.deploy' if deploy else ''}.onnx"

    def onnx_sidecar(self, precision: str = "fp32", deploy: bool = False) -> Path:
        return self.onnx_path(precision, deploy).with_suffix(".json")

    def deploy_onnx_path(self, precision: str = "fp32") -> Path:
        return self.onnx_path(precision, deploy=True)

    def deploy_onnx_sidecar(self, precision: str = "fp32") -> Path:
        return self.onnx_sidecar(precision, deploy=True)

    def compile_cache(self, backend: str) -> Path:
        """Where a runtime keeps compiled models between processes (OpenVINO's CACHE_DIR); safe to delete."""
        return self.path / "cache" / backend

    @property
    def engines_dir(self) -> Path:
        return self.path / "engines"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    def cross_metrics(self, dataset: str) -> Path:
        """The evaluation on another dataset that a study keeps beside metrics.json."""
        return self.path / f"metrics.cross-{dataset}.json"

    @property
    def parity(self) -> Path:
        return self.path / "parity.json"

    @property
    def bench(self) -> Path:
        return self.path / "bench.json"

    def predict_dir(self, source_name: str) -> Path:
        """Where `segdeploy predict` writes the masks of a source by default: RUN/predict/<source name>/."""
        return self.path / "predict" / source_name

    @property
    def deploy_dir(self) -> Path:
        return self.path / "deploy"

    @property
    def deploy_manifest(self) -> Path:
        return self.deploy_dir / "manifest.json"

    def require(self, path: Path, command: str) -> Path:
        """`path` must exist; otherwise say which command makes it (`command` + this run, as it can be typed)."""
        if not path.exists():
            raise StageMissingError(f"{path} not found: run `segdeploy {command} {shlex.quote(str(self.path))}` first")
        return path

    def train_command(self) -> str:
        """The command that makes this run's checkpoints again, as it can be typed: an unfinished run is
        continued, a finished one trained again from its own config.toml."""
        if self.config_path.is_file() and not self.is_finished():
            return shlex.join(["segdeploy", "train", "--resume", str(self.path)])
        return shlex.join(["segdeploy", "train", "--config", str(self.config_path), "--output", str(self.path),
                           "--overwrite"])

    def require_checkpoint(self, which: str = "best") -> Path:
        path = self.checkpoint(which)
        if not path.exists():
            raise StageMissingError(f"{path} not found: run `{self.train_command()}` first")
        return path

    # ------------------------------------------------------------------ readers

    def checkpoint_changed(self, record: dict) -> bool:
        """A result or graph that records the sha256 of the checkpoint it came from was made from another
        checkpoints/best.pt than the one here now (trained again since)."""
        recorded = record.get("checkpoint_sha256")
        best = self.checkpoint("best")
        return bool(recorded) and best.is_file() and recorded != fileio.sha256_cached(best)

    def load_config(self) -> Config:
        return load_config(self.config_path)

    def read_json(self, path: Path, default: Any = None) -> Any:
        """A JSON artefact of this run; `default` when it does not exist, a one-line error when unreadable."""
        if not path.is_file():
            return default
        try:
            return fileio.read_json(path)
        except (OSError, ValueError) as exc:
            raise SegdeployError(f"cannot read {path}: {exc} (delete it and rerun the command that writes it)") from None

    def read_metrics(self) -> dict | None:
        return self.read_json(self.metrics)

    def read_parity(self) -> dict | None:
        return self.read_json(self.parity)

    def read_bench(self) -> dict | None:
        return self.read_json(self.bench)

    def read_deploy_manifest(self) -> dict | None:
        """The bundle `segdeploy deploy` wrote (its "variant" and "precision" are predict's default); None if
        there is none."""
        return self.read_json(self.deploy_manifest)

    def read_history(self) -> list[dict[str, float | None]]:
        """history.csv as one dict per epoch, numbers as floats (None where a cell is empty)."""
        if not self.history.is_file():
            return []
        with open(self.history, newline="") as f:
            return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(f)]

    def epochs_done(self) -> int:
        """Epochs recorded in history.csv (may lag last.pt by one epoch after a kill)."""
        return len(self.read_history())

    def is_finished(self) -> bool:
        """Training wrote every epoch it planned (its config's epochs; under a time budget, the epochs the
        budget fitted: history.csv's planned_epochs); otherwise `segdeploy train --resume` it."""
        rows = self.read_history()
        planned = rows[-1].get("planned_epochs") if rows else None
        return len(rows) >= (int(planned) if planned else self.load_config().train.epochs)

    def training_cost(self) -> dict[str, float | int | None]:
        """Mean seconds per epoch, peak training GPU memory (MB; None on CPU) and epochs, from history.csv."""
        rows = self.read_history()
        seconds = [r["seconds"] for r in rows if r.get("seconds") is not None]
        peaks = [r["peak_gpu_memory_mb"] for r in rows if r.get("peak_gpu_memory_mb") is not None]
        return {"seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
                "peak_memory_mb": max(peaks) if peaks else None, "epochs": len(rows)}

    def read_checkpoint(self, which: str = "best") -> dict:
        """A checkpoint's contents (model state, config, class names, ...) on the CPU."""
        import torch

        path = self.checkpoint(which)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise StageMissingError(f"checkpoint not found: {path} (train it: `{self.train_command()}`)") from None
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same user error
            raise SegdeployError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}); "
                                 "retrain, or use the other checkpoint (best/last)") from None
        if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
            raise SegdeployError(f"{path} is not a segdeploy checkpoint")
        return ckpt


def _number(value: str | None) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number

