"""`segdeploy eval`: metrics and figures of a trained model through any backend runner.

Layout: every evaluation writes RUN/eval/<backend>-<precision>-<dataset>-<split>/ (metrics.json and
the figures). The in-domain default (torch fp32 on the run's own dataset, validation split, same image
cap) is also written to RUN/metrics.json, which later commands and reports read.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from segdeploy.core import fileio
from segdeploy.core.config import DataConfig, EvalConfig, copy_config
from segdeploy.data.dataset import SegDataset
from segdeploy.data.registry import build_dataset
from segdeploy.core.errors import DataError
from segdeploy.evaluation.hd95 import hd95_images, summarize_hd95
from segdeploy.data.metrics import confusion_matrix, per_class_metrics, summarize
from segdeploy.core.progress import console, track
from segdeploy.runtime.base import Runner, iterate_outputs, predicted_labels
from segdeploy.runtime.variants import REFERENCE, RuntimeContext, build_runner, parse_variant
from segdeploy.core.rundir import RunDir
from segdeploy.core.unit import FileUnit
from segdeploy.core.validate import check_paths, validate_section



def predict_dataset(runner: Runner, dataset: SegDataset, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(confusion matrix, uint8 N x H x W predicted label maps) over a dataset."""
    cm = np.zeros((dataset.num_classes, dataset.num_classes), np.int64)
    preds = np.empty(dataset.masks.shape, np.uint8)
    batches = iterate_outputs(runner, dataset, batch_size)
    for indices, output in track(batches, f"eval {runner.name}/{runner.precision}",
                                 total=-(-len(dataset) // batch_size)):
        labels = predicted_labels(runner, output)
        preds[indices.start:indices.stop] = labels
        cm += confusion_matrix(dataset.masks[indices.start:indices.stop], labels, dataset.num_classes)
    return cm, preds


def image_scores(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> tuple[float | None, float | None]:
    """Image-level IoU and Dice: the mean over classes present in this image's truth or prediction."""
    per_class = per_class_metrics(confusion_matrix(truth, pred, num_classes))
    iou, dice = per_class["iou"], per_class["dice"]
    if np.all(np.isnan(iou)):
        return None, None
    return float(np.nanmean(iou)), float(np.nanmean(dice))


def eval_label(backend: str, precision: str, data: DataConfig, split: str, in_domain: bool) -> str:
    """Folder name of one evaluation: backend-precision-dataset-split, with the data root's folder
    name added to the dataset for cross-domain data (two folders of one type stay apart)."""
    dataset = data.dataset
    if not in_domain and data.root:
        dataset = f"{dataset}_{Path(data.root).expanduser().resolve().name}"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{backend}-{precision}-{dataset}-{split}")


def _same_root(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return a == b
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def eval_data_config(run_data: DataConfig, num_classes: int, dataset: str | None = None,
                     data_root: str | None = None, max_images: int | None = None) -> tuple[DataConfig, bool]:
    """Data config of an evaluation and whether it is in-domain (the run's own dataset and root).

    Another dataset is read at the run's input size with the run's number of classes; binary
    datasets give background 0 and foreground 1."""
    data = copy_config_data(run_data)
    data.augment = "none"
    if dataset is not None:
        data.dataset = dataset
    if data_root is not None:
        data.root = data_root
    in_domain = data.dataset == run_data.dataset and _same_root(data.root, run_data.root)
    if not in_domain:
        data.max_images = None
        if data.dataset in ("folder", "synthetic"):
            data.num_classes = num_classes
    if max_images is not None:
        data.max_images = max_images
    return data, in_domain


def copy_config_data(data: DataConfig) -> DataConfig:
    return DataConfig(**vars(data))


def evaluate(run: RunDir, cfg: EvalConfig | None = None, data: DataConfig | None = None) -> dict:
    """Evaluate a run on `cfg.split` of its own dataset (default val), or of another one (`cfg.dataset`/
    `cfg.data_root`, or a whole `data` config; default: all its images), through the runtime variant `cfg.backend`; writes RUN/eval/<label>/metrics.json
    and figures (and RUN/metrics.json for the in-domain torch fp32 validation result). Returns the metrics."""
    cfg = cfg or EvalConfig()
    validate_section("eval", cfg)
    check_paths("eval", cfg, ("data_root",))
    run_cfg = run.load_config()
    num_classes = run_cfg.model.num_classes
    variant = parse_variant(cfg.backend, cfg.precision)
    if data is not None:
        data_cfg = copy_config_data(data)
        in_domain = data_cfg.dataset == run_cfg.data.dataset and _same_root(data_cfg.root, run_cfg.data.root)
    else:
        data_cfg, in_domain = eval_data_config(copy_config(run_cfg).data, num_classes, cfg.dataset, cfg.data_root,
                                               cfg.max_images)
    split = cfg.split or ("val" if in_domain else "all")  # data the model never saw: all of it
    data_cfg.augment = "none"  # evaluation sees the images as they are, the training split too
    eval_set = build_dataset(data_cfg, split)
    if num_classes is not None and eval_set.num_classes != num_classes:
        raise DataError(f"dataset {data_cfg.dataset!r} has {eval_set.num_classes} classes but the model of "
                        f"{run.path} predicts {num_classes}: evaluate on a dataset with the same classes")
    runner = build_runner(variant, RuntimeContext(run, cfg.device, cfg.threads))
    try:
        cm, preds = predict_dataset(runner, eval_set, cfg.batch_size)
    finally:
        runner.close()
    is_default = (in_domain and split == "val" and variant == REFERENCE
                  and data_cfg.max_images == run_cfg.data.max_images)
    label = eval_label(variant.name, variant.precision, data_cfg, split, in_domain)
    result = {"backend": variant.name, "precision": variant.precision, "device": runner.device,
              "dataset": data_cfg.dataset, "data_root": data_cfg.root, "split": split, "images": len(eval_set),
              "in_domain": in_domain, "default_result": is_default, "train_dataset": run_cfg.data.dataset,
              "size": data_cfg.size, "eval_dir": str(Path("eval") / label),
              # readers check that the result is of the checkpoint there now
              "checkpoint_sha256": fileio.sha256_cached(best) if (best := run.checkpoint("best")).is_file() else None}
    result.update(score(eval_set, cm, preds))
    result["figures"] = {}
    out_dir = run.path / result["eval_dir"]
    with FileUnit(run.path) as unit:  # metrics and figures change together: the old set or the new one
        staging = unit.folder(out_dir)
        if cfg.figures:
            written = write_figures(staging, eval_set, preds, result, top_k=cfg.top_k)
            result["figures"] = {name: str(Path(result["eval_dir"]) / path.name) for name, path in written.items()}
        fileio.write_json(staging / "metrics.json", result)
        if is_default:
            unit.write_json(run.metrics, result)
    return result


def score(eval_set: SegDataset, cm: np.ndarray, preds: np.ndarray) -> dict:
    """Dataset, per-class and per-image metrics of predicted label maps (confusion matrix and HD95)."""
    hd_values, hd_undefined = hd95_images(preds, eval_set.masks, eval_set.num_classes)
    hd = summarize_hd95(hd_values, hd_undefined)
    summary = summarize(cm, eval_set.class_names)
    for i, values in enumerate(summary["per_class"].values()):
        values["hd95"] = hd.per_class[i]
        values["hd95_undefined_pairs"] = hd.undefined_per_class[i]
    per_image = []
    for i in range(len(eval_set)):
        iou, dice = image_scores(eval_set.masks[i], preds[i], eval_set.num_classes)
        row_hd = hd_values[i][~np.isnan(hd_values[i])]
        per_image.append({"id": eval_set.ids[i], "iou": iou, "dice": dice,
                          "hd95": float(row_hd.mean()) if row_hd.size else None})
    return {**summary, "hd95": hd.mean, "hd95_pairs": hd.pairs, "hd95_undefined_pairs": hd.undefined_pairs,
            "class_names": eval_set.class_names, "confusion_matrix": cm.tolist(), "per_image": per_image}


def ranked_indices(per_image: list[dict], k: int) -> tuple[list[int], list[int]]:
    """Indices of the k best and k worst images by image-level IoU (images without a score last)."""
    scored = [i for i, row in enumerate(per_image) if row["iou"] is not None]
    order = sorted(scored, key=lambda i: (per_image[i]["iou"], i))
    k = min(k, len(order))
    return order[::-1][:k], order[:k]


def mosaic_indices(count: int, n: int) -> list[int]:
    """A fixed, evenly spread sample of n image indices (the same for every backend and run)."""
    if count <= n:
        return list(range(count))
    return sorted({int(round(x)) for x in np.linspace(0, count - 1, n)})


def write_figures(out_dir: Path, eval_set: SegDataset, preds: np.ndarray, result: dict,
                  top_k: int = 4, mosaic_images: int = 6) -> dict[str, Path]:
    from segdeploy.evaluation import figures

    names = eval_set.class_names
    dataset = result["dataset"]
    if not result["in_domain"] and result["data_root"]:
        dataset += f" ({Path(result['data_root']).name})"
    where = f"{result['backend']}/{result['precision']} on {dataset}/{result['split']}"
    written = {
        "confusion_matrix": figures.plot_confusion_matrix(
            np.asarray(result["confusion_matrix"]), names, out_dir / "confusion_matrix.png",
            title=f"confusion matrix, rows normalised (%)\n{where}"),
        "per_class": figures.plot_per_class(result["per_class"], out_dir / "per_class.png",
                                            title=f"per-class IoU and Dice, {where}"),
    }

    def rows(indices: list[int], path: Path, title: str) -> Path:
        labels = []
        for i in indices:
            row = result["per_image"][i]
            score = "-" if row["iou"] is None else f"{100 * row['iou']:.1f}"
            labels.append(f"{row['id'][:18]}\nIoU {score}%")
        return figures.plot_mosaic(eval_set.images[indices], eval_set.masks[indices], preds[indices], names,
                                   path, row_labels=labels, title=title, colors=eval_set.palette)

    written["mosaic"] = rows(mosaic_indices(len(eval_set), mosaic_images), out_dir / "mosaic.png", where)
    best, worst = ranked_indices(result["per_image"], top_k)
    if best:
        written["best"] = rows(best, out_dir / "best.png", f"best {len(best)} by image IoU, {where}")
        written["worst"] = rows(worst, out_dir / "worst.png", f"worst {len(worst)} by image IoU, {where}")
    console.print(f"figures: {result['eval_dir']}/ ({', '.join(p.name for p in written.values())})")
    return written
