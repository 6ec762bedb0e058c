"""Mean ± standard deviation over seeds, in one place for the report and the study summary."""

from __future__ import annotations

import math


def mean_std(values: list[float | None]) -> dict:
    """Mean and sample standard deviation (n - 1) of the values that are not missing.

    A single value has no spread to estimate: its std is None (shown as "n=1"), never 0."""
    present = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(present) / len(present)
    std = math.sqrt(sum((v - mean) ** 2 for v in present) / (len(present) - 1)) if len(present) > 1 else None
    return {"mean": mean, "std": std, "n": len(present)}


def format_mean_std(stats: dict, number) -> str:
    """'mean ± std' with `number` formatting each; 'mean (n=1)' for one value; '–' for none."""
    if stats["mean"] is None:
        return "–"
    if stats["std"] is None:
        return f"{number(stats['mean'])} (n={stats['n']})" if stats["n"] == 1 else number(stats["mean"])
    return f"{number(stats['mean'])} ± {number(stats['std'])}"
