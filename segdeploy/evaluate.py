"""`segdeploy eval`: metrics of a trained model through any backend runner."""

from __future__ import annotations

import numpy as np

from segdeploy import fileio
from segdeploy.config import DataConfig, copy_config
from segdeploy.datasets import SegDataset, build_dataset
from segdeploy.metrics import confusion_matrix, summarize
from segdeploy.progress import track
from segdeploy.runners import Runner, iterate_logits, load_runner
from segdeploy.rundir import RunDir


def confusion_over_dataset(runner: Runner, dataset: SegDataset, batch_size: int = 8) -> np.ndarray:
    cm = np.zeros((dataset.num_classes, dataset.num_classes), np.int64)
    batches = iterate_logits(runner, dataset, batch_size)
    for indices, logits in track(batches, f"eval {runner.name}/{runner.precision}",
                                 total=-(-len(dataset) // batch_size)):
        cm += confusion_matrix(dataset.masks[indices.start:indices.stop], logits.argmax(1), dataset.num_classes)
    return cm


def evaluate(run: RunDir, backend: str = "torch", precision: str = "fp32", split: str = "val",
             data: DataConfig | None = None, device: str = "cpu", batch_size: int = 8,
             threads: int | None = None) -> dict:
    """Evaluate a run on `split` of its own dataset (or of `data`); writes RUN/metrics.json."""
    cfg = run.load_config()
    data_cfg = copy_config(cfg).data if data is None else data
    dataset = build_dataset(data_cfg, split)
    runner = load_runner(backend, run, precision=precision, device=device, threads=threads)
    cm = confusion_over_dataset(runner, dataset, batch_size)
    result = {
        "backend": backend, "precision": precision, "device": device,
        "dataset": data_cfg.dataset, "data_root": data_cfg.root, "split": split, "images": len(dataset),
        **summarize(cm, dataset.class_names),
        "confusion_matrix": cm.tolist(),
    }
    fileio.write_json(run.metrics, result)
    return result
