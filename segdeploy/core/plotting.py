"""Figures without pyplot state (matplotlib's Agg canvas), written atomically; shared by every layer."""

from __future__ import annotations

from pathlib import Path

from segdeploy.core import fileio

DPI = 100


def new_figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> Path:
    """PNG written atomically (fileio), no pyplot state involved."""
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)
