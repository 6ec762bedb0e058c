"""`segdeploy report`: drops, seed aggregation, and a rendered report over evaluated runs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import clone_run, make_folder_dataset
from segdeploy.cli import app
from segdeploy.core.errors import StageMissingError
from segdeploy.core.config import EvalConfig
from segdeploy.evaluation.evaluate import evaluate
from segdeploy.evaluation.run_summaries import aggregate_seeds, cross_dataset_rows, load_run_summary, metric_drop
from segdeploy.evaluation.report_files import fmt, write_report
from segdeploy.evaluation.stats import mean_std


def test_metric_drop_arithmetic():
    assert metric_drop(0.80, 0.60) == pytest.approx((0.20, 0.25))
    assert metric_drop(0.50, 0.55) == pytest.approx((-0.05, -0.10))  # cross-domain better: negative drop
    assert metric_drop(10.0, 15.0, lower_is_better=True) == pytest.approx((5.0, 0.5))
    assert metric_drop(None, 0.5) == (None, None)
    assert metric_drop(0.0, 0.0) == (0.0, None)


def summary_with(evaluations: list[dict], **metrics) -> dict:
    return {"name": "r", "dataset": "kvasir", "evaluations": evaluations,
            **{"pixel_accuracy": 0.9, "miou": 0.8, "mean_dice": 0.85, "hd95": 10.0, **metrics}}


def evaluation(backend: str, in_domain: bool, dataset: str, **metrics) -> dict:
    return {"label": f"{backend}-fp32-{dataset}-val", "backend": backend, "precision": "fp32", "split": "val",
            "dataset": dataset, "dataset_label": dataset, "in_domain": in_domain, **metrics}


def test_cross_dataset_rows_compare_against_the_same_backend():
    evaluations = [
        evaluation("torch", True, "kvasir", pixel_accuracy=0.9, miou=0.8, mean_dice=0.85, hd95=10.0),
        evaluation("onnxruntime", True, "kvasir", pixel_accuracy=0.88, miou=0.75, mean_dice=0.8, hd95=12.0),
        evaluation("onnxruntime", False, "cvc", pixel_accuracy=0.66, miou=0.6, mean_dice=0.6, hd95=18.0),
        evaluation("torch", False, "cvc", pixel_accuracy=0.72, miou=0.6, mean_dice=0.68, hd95=25.0),
    ]
    rows = {(r["backend"], r["metric"]): r for r in cross_dataset_rows(summary_with(evaluations))}
    assert len(rows) == 8
    assert rows["torch", "miou"]["absolute_drop"] == pytest.approx(0.2)
    assert rows["torch", "miou"]["relative_drop"] == pytest.approx(0.25)
    assert rows["torch", "pixel_accuracy"]["relative_drop"] == pytest.approx(0.18 / 0.9)
    assert rows["torch", "hd95"]["absolute_drop"] == pytest.approx(15.0)
    assert rows["torch", "hd95"]["relative_drop"] == pytest.approx(1.5)
    assert rows["onnxruntime", "miou"]["in_domain"] == 0.75
    assert rows["onnxruntime", "miou"]["absolute_drop"] == pytest.approx(0.15)
    assert rows["onnxruntime", "hd95"]["absolute_drop"] == pytest.approx(6.0)
    # no in-domain evaluation of that backend: the run's default metrics are the reference
    only_cross = cross_dataset_rows(summary_with([evaluation("torch", False, "cvc", miou=0.4)], miou=0.8))
    miou = next(r for r in only_cross if r["metric"] == "miou")
    assert miou["absolute_drop"] == pytest.approx(0.4) and miou["relative_drop"] == pytest.approx(0.5)


def test_aggregate_seeds_groups_runs_that_differ_only_by_seed():
    def row(name, group, seed, miou, hd):
        return {"name": name, "run": f"runs/{name}", "seed": seed, "group_key": group, "model": "unet",
                "encoder": "resnet18", "loss": "ce", "pixel_accuracy": 0.9, "miou": miou, "mean_dice": 0.8,
                "hd95": hd, "seconds_per_epoch": 2.0, "peak_memory_mb": None, "parameters": 100}

    rows = [row("a-s0", "A", 0, 0.7, 4.0), row("b", "B", 0, 0.5, 9.0), row("a-s1", "A", 1, 0.8, 6.0),
            row("a-s2", "A", 2, 0.9, None)]
    groups = aggregate_seeds(rows)
    assert len(groups) == 1
    group = groups[0]
    assert group["seeds"] == [0, 1, 2] and group["n"] == 3 and group["name"] == "a-s (3 seeds)"
    assert group["miou"]["mean"] == pytest.approx(0.8)
    assert group["miou"]["std"] == pytest.approx(np.std([0.7, 0.8, 0.9], ddof=1))
    assert group["hd95"] == {"mean": 5.0, "std": pytest.approx(np.sqrt(2)), "n": 2}  # missing value left out
    assert group["peak_memory_mb"] == {"mean": None, "std": None, "n": 0}
    assert mean_std([3.0]) == {"mean": 3.0, "std": None, "n": 1}  # one run has no spread to report


def test_numbers_are_formatted_as_in_the_studies():
    assert fmt(0.80125, "rate") == "80.12" or fmt(0.80125, "rate") == "80.13"
    assert fmt(0.5, "rate") == "50.00"
    assert fmt(3.14159, "px") == "3.14"
    assert fmt(14_328_754, "params") == "14.33"
    assert fmt(None, "rate") == "-"


@pytest.fixture(scope="module")
def two_seed_runs(trained_run, tmp_path_factory):
    """Two clones of the tiny run that differ only by seed; the first also evaluated cross-dataset."""
    base = tmp_path_factory.mktemp("report")
    first = clone_run(trained_run, base / "tiny-s0", seed=0)
    second = clone_run(trained_run, base / "tiny-s1", seed=1)
    evaluate(first, EvalConfig(["torch"], figures=True, top_k=2))
    root = make_folder_dataset(base / "other", count=10, size=48, num_classes=4)
    evaluate(first, EvalConfig(["torch"], dataset="folder", data_root=str(root), figures=False))
    # The second run is the same model: give it its own (shifted) metrics so mean +- std is visible.
    second.metrics.write_text(first.metrics.read_text())
    stored = json.loads(first.metrics.read_text())
    stored["miou"] = stored["miou"] + 0.1
    second.metrics.write_text(json.dumps(stored))
    return first, second


def test_report_over_two_seeds_renders_tables_and_figures(two_seed_runs, tmp_path):
    first, second = two_seed_runs
    path = write_report([first.path, second.path], tmp_path / "out")
    text = path.read_text()
    summary = load_run_summary(first)
    assert f"| tiny-s0 | unet | resnet18 | ce | 0 | {100 * summary['pixel_accuracy']:.2f} |" in text
    mious = [summary["miou"], summary["miou"] + 0.1]
    expected = f"{100 * np.mean(mious):.2f} ± {100 * np.std(mious, ddof=1):.2f}"
    assert "## Mean ± std over seeds" in text and expected in text
    assert "## Cross-dataset" in text and "| tiny-s0 | synthetic | folder (other) | torch/fp32 | mIoU % |" in text
    assert "## Per class" in text and "### tiny-s1" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "figures/comparison.png" in links
    assert "## Learning curves" in text and "figures/tiny-s0/curves.png" in links  # drawn from history.csv
    assert any(link.endswith("torch-fp32-synthetic-val/mosaic.png") for link in links)
    for link in links:
        assert (path.parent / link).read_bytes()[:4] == b"\x89PNG", link
    report = json.loads((path.parent / "report.json").read_text())
    assert len(report["runs"]) == 2 and report["seed_groups"][0]["seeds"] == [0, 1]
    cross = next(r for r in report["cross_dataset"] if r["metric"] == "miou")
    assert cross["absolute_drop"] == pytest.approx(cross["in_domain"] - cross["cross_domain"])
    assert summary["parameters"] > 1_000_000 and summary["seconds_per_epoch"] > 0


def test_report_needs_evaluated_runs(trained_run, tmp_path):
    run = clone_run(trained_run, tmp_path / "fresh")
    with pytest.raises(StageMissingError, match="segdeploy eval"):
        load_run_summary(run.path)
    result = CliRunner().invoke(app, ["report", str(run.path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "segdeploy eval" in result.output
