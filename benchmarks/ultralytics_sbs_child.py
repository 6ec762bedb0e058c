"""The Ultralytics side of benchmarks/ultralytics_side_by_side.py: runs ONLY under the separate venv's python
(`/work/ulvenv/bin/python`), never the project's. Imports nothing from segdeploy.

    train  DATA_YAML OUT MINUTES [MAX_EPOCHS]  yolo26n-sem.yaml from scratch, task=semantic, 128 px, batch 16,
                                               workers 0, one thread, seed 0 -> OUT/ultralytics/ + OUT/train.json
    export OUT                                 best.pt -> OUT/logits.onnx (logits at 1/8, for the scorer) and
                                               Ultralytics' own ONNX export (argmax baked in, for latency)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _offline(out_dir: Path) -> None:
    """No downloads, no auto-installs, no telemetry (the machine is offline and the venv stays as built);
    Ultralytics' settings file goes under OUT, not ~/.config."""
    os.environ.setdefault("YOLO_CONFIG_DIR", str(out_dir / "config"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "true")
    from ultralytics import settings

    off = ("sync", "hub", "wandb", "mlflow", "tensorboard", "clearml", "comet", "dvc", "neptune", "raytune")
    settings.update({key: False for key in off if key in settings})


def _model_info(model) -> dict:
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    return {"params": int(get_num_params(model)), "gflops_at_128": float(get_flops(model, 128))}


def train(data_yaml: str, out: str, minutes: float, max_epochs: int = 1000) -> None:
    import torch

    torch.set_num_threads(1)
    out_dir = Path(out)
    _offline(out_dir)
    from ultralytics import YOLO

    model = YOLO("yolo26n-sem.yaml", task="semantic")
    start = time.time()
    model.train(data=data_yaml, task="semantic", imgsz=128, batch=16, workers=0, epochs=max_epochs,
                time=minutes / 60, device="cpu", seed=0, deterministic=True, pretrained=False, amp=False,
                plots=False, project=str(out_dir), name="ultralytics", exist_ok=True, verbose=True)
    wall = time.time() - start
    save_dir = Path(model.trainer.save_dir)
    epochs, train_s = _epochs_done(save_dir / "results.csv")
    best = save_dir / "weights" / "best.pt"
    info = _model_info(YOLO(str(best)).model if best.is_file() else model.model)
    record = {"tool": "ultralytics", "model": "yolo26n-sem.yaml (random init)", "epochs": epochs,
              "wall_s": wall, "train_s": train_s,
              "s_per_epoch": train_s / epochs if epochs else None, "weights": str(best),
              "threads": torch.get_num_threads(), "ultralytics": _version(), "torch": torch.__version__, **info}
    (out_dir / "train.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


def _epochs_done(results_csv: Path) -> tuple[int, float]:
    """Epochs finished and the training seconds at the last one (results.csv's `time` is cumulative)."""
    import csv

    if not results_csv.is_file():
        return 0, 0.0
    rows = list(csv.DictReader(results_csv.open()))
    return len(rows), float(rows[-1]["time"]) if rows else 0.0


def _version() -> str:
    import ultralytics

    return ultralytics.__version__


def export(out: str) -> None:
    """Two ONNX graphs of best.pt: logits (the scorer's) and Ultralytics' own export (the latency's)."""
    import shutil

    import torch

    torch.set_num_threads(1)
    out_dir = Path(out)
    _offline(out_dir)
    from ultralytics import YOLO

    best = out_dir / "ultralytics" / "weights" / "best.pt"
    model = YOLO(str(best))
    net = model.model.float().eval()
    dummy = torch.zeros(1, 3, 128, 128)
    with torch.no_grad():
        logits = net(dummy)
    print(f"logits graph output {tuple((logits[0] if isinstance(logits, (tuple, list)) else logits).shape)}")
    torch.onnx.export(_LogitsOnly(net), dummy, str(out_dir / "logits.onnx"), input_names=["images"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    exported = model.export(format="onnx", imgsz=128, batch=1, dynamic=False, simplify=True, device="cpu")
    shutil.copy(exported, out_dir / "ultralytics_export.onnx")
    print(json.dumps({"logits": str(out_dir / "logits.onnx"), "export": str(out_dir / "ultralytics_export.onnx")}))


class _LogitsOnly:
    """Callable torch module wrapper whose output is the main logits tensor (not an (main, aux) tuple)."""

    def __new__(cls, net):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x):
                y = self.net(x)
                return y[0] if isinstance(y, (tuple, list)) else y

        return Wrapped().eval()


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "train":
        train(args[0], args[1], float(args[2]), int(args[3]) if len(args) > 3 else 1000)
    elif command == "export":
        export(args[0])
    else:
        raise SystemExit(f"unknown command {command!r}: train or export")
