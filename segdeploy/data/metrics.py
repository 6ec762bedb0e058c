"""Segmentation metrics, all derived from one confusion matrix (rows = truth, columns = prediction)."""

from __future__ import annotations

import numpy as np

from segdeploy.data.preprocess import VOID_LABEL


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 num_classes x num_classes counts over pixels whose truth is not void."""
    truth = np.asarray(truth).ravel()
    pred = np.asarray(pred).ravel()
    valid = truth != VOID_LABEL
    index = truth[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def per_class_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """IoU, Dice and accuracy (recall) per class; NaN where a class is absent from truth and prediction."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    fn = cm.sum(axis=1) - tp
    fp = cm.sum(axis=0) - tp
    return {
        "iou": _safe_div(tp, tp + fp + fn),
        "dice": _safe_div(2 * tp, 2 * tp + fp + fn),
        "accuracy": _safe_div(tp, tp + fn),
    }


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def unique_names(names: list[str]) -> list[str]:
    """Class names as keys: a repeated name gets its index (`road (3)`), so no class overwrites another."""
    return [f"{name} ({i})" if list(names).count(name) > 1 else name for i, name in enumerate(names)]


def summarize(cm: np.ndarray, class_names: list[str] | None = None) -> dict:
    """Pixel accuracy, mIoU, mean Dice and per-class values; rates are fractions in [0, 1]."""
    per_class = per_class_metrics(cm)
    names = unique_names(class_names or [str(i) for i in range(len(cm))])
    total = cm.sum()
    return {
        "pixel_accuracy": float(np.trace(cm) / total) if total else float("nan"),
        "miou": _nanmean(per_class["iou"]),
        "mean_dice": _nanmean(per_class["dice"]),
        "per_class": {
            name: {key: (None if np.isnan(v[i]) else float(v[i])) for key, v in per_class.items()}
            for i, name in enumerate(names)
        },
    }
