"""A study's results laid out like a seed study's own tables (seed_tables.md), the seed's published number
next to ours wherever the run names match.

A layout is an entry of LAYOUTS: the tables it renders and the published tables it reads. `seg_review`
is the second seed's (Table 1 baselines, Tables 3/4 ablations per model, Tables 5/6 cross-dataset drops,
Table 7 per-class differences, plus the compute cost it asks for); `voc2007` the first seed's (main table,
training time per epoch). A study file chooses one with `[study] layout = "..."`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from segdeploy.core import fileio
from segdeploy.core.errors import ConfigError
from segdeploy.core.registry import Registry
from segdeploy.study.grid import Study
from segdeploy.study.layouts.published import Published, load_published
from segdeploy.study.layouts.seg_review import render_seg_review
from segdeploy.study.layouts.table_input import NO_VALUE, TableInput, collect_table_input
from segdeploy.study.layouts.voc2007 import render_voc2007


@dataclass(frozen=True)
class TableLayout:
    description: str
    render: Callable[[TableInput], list[str]]  # markdown lines
    published_tables: tuple[str, ...]  # the arrays of tables a published file may hold for this layout


# --------------------------------------------------------------------------- registry and writing

LAYOUTS: Registry[TableLayout] = Registry("table layout")
LAYOUTS.register("seg_review", TableLayout(
    "second seed: DeepLabV3 vs U-Net review (Tables 1, 3/4, 5/6, 7 and compute cost)", render_seg_review,
    ("baselines", "ablations", "cross", "per_class")))
LAYOUTS.register("voc2007", TableLayout(
    "first seed: Pascal VOC 2007 (main table, training time per epoch)", render_voc2007, ("main",)))


def study_published(study: Study) -> Published | None:
    """The study's published numbers, checked against its layout (None when the study names none)."""
    if study.published is None:
        return None
    if study.layout is None:
        raise ConfigError("study.published needs study.layout (which tables to put the numbers in)")
    return load_published(study.published, LAYOUTS[study.layout].published_tables)


def check_layout(study: Study) -> None:
    """Everything about the tables that can be checked without runs: layout, published file, pairs."""
    if study.layout is not None:
        LAYOUTS[study.layout]
    study_published(study)
    configs = {p.config_name for p in study.runs}
    if study.per_class_delta and (len(study.per_class_delta) != 2 or not set(study.per_class_delta) <= configs):
        raise ConfigError(f"study.per_class_delta must name two configurations of this study, got "
                          f"{study.per_class_delta} (configurations: {', '.join(sorted(configs))})")


def render_seed_tables(study: Study) -> str:
    layout = LAYOUTS[study.layout]
    published = study_published(study)
    data = collect_table_input(study, published)
    trained = sum(c["trained"] for c in data.configs)
    lines = [f"# Study `{study.name}` in the layout of the {layout.description}", ""]
    if study.description:
        lines += [study.description.strip(), ""]
    lines += [f"Ours: `segdeploy study {study.path.name}`, {trained} of {len(study.runs)} runs trained, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (hardware and every other column: summary.md). "
              f"A cell of ours is the mean ± sample std over a configuration's runs, `value (n=1)` for one run, "
              f"{NO_VALUE} where nothing was measured."]
    if published is not None:
        lines += ["", f"Published: {published.describe()} (`{published.path.name}`). They stand next to ours "
                      "where the run names match; they were measured under the seed's setup, not this study's."]
    return "\n".join([*lines, "", *layout.render(data)])


def write_seed_tables(study: Study) -> Path | None:
    """OUTPUT/seed_tables.md when the study names a layout; returns its path (None without a layout)."""
    if study.layout is None:
        return None
    path = study.output / "seed_tables.md"
    fileio.write_text(path, render_seed_tables(study))
    return path

