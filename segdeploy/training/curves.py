"""RUN/curves.png: the learning curves of a run (train and validation loss, validation mIoU and Dice per
epoch), rewritten after every epoch from the rows of history.csv."""

from __future__ import annotations

from pathlib import Path

from segdeploy.core.plotting import new_figure, save_figure


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [e for e, _ in points], [v for _, v in points]


def plot_learning_curves(rows: list[dict], path: Path, title: str = "") -> Path:
    """Two panels over epochs: losses (train, val) and validation scores (mIoU, mean Dice, in %)."""
    fig = new_figure(10.0, 4.0)
    loss_ax, score_ax = fig.subplots(1, 2)
    for key, label, style in (("train_loss", "train loss", "o-"), ("val_loss", "val loss", "s-")):
        epochs, values = _series(rows, key)
        loss_ax.plot(epochs, values, style, markersize=3, label=label)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss")
    loss_ax.legend()
    best = None
    for key, label, style in (("val_miou", "val mIoU", "o-"), ("val_mean_dice", "val mean Dice", "s-")):
        epochs, values = _series(rows, key)
        score_ax.plot(epochs, [100 * v for v in values], style, markersize=3, label=label)
        if key == "val_miou" and values:
            best = max(range(len(values)), key=values.__getitem__)
            score_ax.annotate(f"best {100 * values[best]:.2f} (epoch {epochs[best]})", (epochs[best], 100 * values[best]),
                              textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
    score_ax.set_xlabel("epoch")
    score_ax.set_ylabel("%")
    score_ax.set_title("validation")
    score_ax.legend(loc="lower right")
    for ax in (loss_ax, score_ax):
        ax.grid(alpha=0.3)
        if len(rows) < 15:
            ax.set_xticks([int(r["epoch"]) for r in rows])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
