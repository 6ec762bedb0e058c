"""Evaluation figures (matplotlib, Agg canvas, no pyplot state): confusion matrix, per-class bars,
input | truth | prediction mosaics. Every figure has a fixed size in pixels (`figure_pixels`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdeploy.core.plotting import DPI, new_figure, save_figure  # noqa: F401 (also used by bench plots)
from segdeploy.data.preprocess import VOID_LABEL

VOID_COLOR = (255, 255, 255)
# Background black, then well-separated colours (tab10 then tab20b); cycled past 30 classes.
_BASE_COLORS = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
    (255, 215, 180), (0, 0, 128), (128, 128, 128),
]


def palette(num_classes: int) -> np.ndarray:
    """uint8 num_classes x 3 colours, the same for truth and prediction in every figure."""
    return np.array([_BASE_COLORS[c % len(_BASE_COLORS)] for c in range(num_classes)], np.uint8)


def colorize(mask: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """uint8 H x W label map -> uint8 H x W x 3; void pixels white."""
    lut = np.tile(np.array(VOID_COLOR, np.uint8), (256, 1))
    lut[: len(colors)] = colors
    return lut[mask]


def figure_pixels(kind: str, num_classes: int = 2, rows: int = 1) -> tuple[int, int]:
    """(width, height) in pixels of a figure written by this module."""
    width, height = _figure_inches(kind, num_classes, rows)
    return round(width * DPI), round(height * DPI)


def _figure_inches(kind: str, num_classes: int, rows: int) -> tuple[float, float]:
    if kind == "confusion_matrix":
        side = min(max(4.5, 0.45 * num_classes + 2.5), 16.0)
        return side + 1.0, side
    if kind == "per_class":
        return min(max(5.0, 0.6 * num_classes + 2.0), 20.0), 4.0
    if kind == "mosaic":
        legend_rows = -(-min(num_classes, MAX_LEGEND_CLASSES) // 6)
        return 7.5, 2.4 * rows + 0.3 * legend_rows + 0.5
    raise ValueError(f"unknown figure kind {kind!r}")


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows = truth), percentages annotated for up to 25 classes."""
    num_classes = len(class_names)
    cm = np.asarray(cm, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(cm.sum(1, keepdims=True) > 0, cm / np.maximum(cm.sum(1, keepdims=True), 1), 0.0)
    fig = new_figure(*_figure_inches("confusion_matrix", num_classes, 1))
    ax = fig.add_subplot()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true pixels")
    ticks = _tick_classes(num_classes)
    labels = [class_names[i] for i in ticks]
    ax.set_xticks(ticks, labels, rotation=45 if num_classes > 4 else 0, ha="right" if num_classes > 4 else "center")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if num_classes <= 25:
        for i in range(num_classes):
            for j in range(num_classes):
                value = normalised[i, j]
                ax.text(j, i, f"{100 * value:.1f}", ha="center", va="center", fontsize=8 if num_classes > 10 else 10,
                        color="white" if value > 0.5 else "black")
    ax.set_title(title or "confusion matrix (rows normalised, %)")
    fig.tight_layout()
    return save_figure(fig, path)


MAX_TICK_LABELS = 50  # more class names than this along an axis overlap at the widest figure (16-20 inches)
MAX_LEGEND_CLASSES = 24  # a mosaic with more classes lists those its masks show, not 40 rows of legend


def _tick_classes(num_classes: int) -> list[int]:
    """The classes an axis names: all up to MAX_TICK_LABELS, else every k-th (the rest stay unlabelled)."""
    return list(range(0, num_classes, -(-num_classes // MAX_TICK_LABELS)))


def legend_classes(truths: np.ndarray, preds: np.ndarray, num_classes: int) -> list[int]:
    """The classes a mosaic's legend names: all, or past MAX_LEGEND_CLASSES those covering most of its masks."""
    if num_classes <= MAX_LEGEND_CLASSES:
        return list(range(num_classes))
    pixels = np.bincount(np.concatenate([truths.ravel(), preds.ravel()]), minlength=256)[:num_classes]
    return sorted(int(i) for i in np.argsort(-pixels, kind="stable")[:MAX_LEGEND_CLASSES] if pixels[i])


def plot_per_class(per_class: dict[str, dict], path: Path, title: str = "") -> Path:
    """Grouped bars of per-class IoU and Dice (%), from metrics.json's `per_class`."""
    names = list(per_class)
    fig = new_figure(*_figure_inches("per_class", len(names), 1))
    ax = fig.add_subplot()
    x = np.arange(len(names))
    width = 0.38
    for offset, key, label, color in ((-width / 2, "iou", "IoU", "#1f77b4"), (width / 2, "dice", "Dice", "#ff7f0e")):
        values = [100 * (per_class[n][key] if per_class[n][key] is not None else np.nan) for n in names]
        bars = ax.bar(x + offset, np.nan_to_num(values), width, label=label, color=color)
        if len(names) <= 12:
            for bar, value in zip(bars, values):
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1,
                        "-" if np.isnan(value) else f"{value:.1f}", ha="center", va="bottom", fontsize=8)
    ticks = _tick_classes(len(names))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=45 if len(names) > 6 else 0,
                  ha="right" if len(names) > 6 else "center")
    ax.set_ylim(0, 110)
    ax.set_ylabel("%")
    ax.legend(loc="upper right", ncols=2)
    ax.set_title(title or "per-class IoU and Dice")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_mosaic(images: np.ndarray, truths: np.ndarray, preds: np.ndarray, class_names: list[str],
                path: Path, row_labels: list[str] | None = None, title: str = "",
                colors: np.ndarray | None = None) -> Path:
    """One row per image: input | truth | prediction, one palette for both masks (the dataset's class
    map when it has one), legend below."""
    from matplotlib.patches import Patch

    rows = len(images)
    colors = palette(len(class_names)) if colors is None else np.asarray(colors, np.uint8)
    fig = new_figure(*_figure_inches("mosaic", len(class_names), rows))
    axes = fig.subplots(rows, 3, squeeze=False)
    for r in range(rows):
        for c, (panel, name) in enumerate(((images[r], "input"), (colorize(truths[r], colors), "truth"),
                                           (colorize(preds[r], colors), "prediction"))):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name)
        if row_labels:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
    handles = [Patch(facecolor=colors[i] / 255.0, edgecolor="grey", label=class_names[i]) for i in legend_classes(truths, preds, len(class_names))]
    if np.any(truths == VOID_LABEL):
        handles.append(Patch(facecolor=np.array(VOID_COLOR) / 255.0, edgecolor="grey", label="void"))
    fig.legend(handles=handles, loc="lower center", ncols=min(len(handles), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    legend_rows = -(-len(handles) // 6)
    top = 1 - (0.35 / fig.get_figheight() if title else 0)
    fig.tight_layout(rect=(0, 0.3 * legend_rows / fig.get_figheight() + 0.01, 1, top))
    return save_figure(fig, path)


def plot_bars(labels: list[str], series: dict[str, list[float | None]], path: Path, ylabel: str = "%",
              title: str = "") -> Path:
    """Grouped bars, one group per label (e.g. one per run), one bar per series (e.g. metric)."""
    fig = new_figure(min(max(5.0, 1.2 * len(labels) * max(1, len(series)) / 2 + 2.0), 20.0), 4.5)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        heights = np.array([np.nan if v is None else v for v in values], np.float64)
        bars = ax.bar(x - 0.4 + width * (k + 0.5), np.nan_to_num(heights), width, label=name)
        for bar, value in zip(bars, heights):
            if not np.isnan(value):
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{value:.1f}", ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(x, labels, rotation=20 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, ncols=len(series))
    ax.set_title(title)
    ax.margins(y=0.15)
    fig.tight_layout()
    return save_figure(fig, path)
