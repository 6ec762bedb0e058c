"""`segdeploy report`'s "Speed against accuracy": mIoU (metrics.json) against latency (one bench.json row per
run, the same variant for all) and against training wall clock (history.csv), through the real CLI."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import clone_run
from segdeploy.cli import app
from segdeploy.evaluation.speed_accuracy import LatencyChoice, choose_variant, usable_rows

FAST_BENCH = ["--precision", "fp32", "--batch-sizes", "1", "--max-time", "0.3", "--warmup", "1", "--max-warmup", "5",
              "--min-iters", "3", "--in-process"]


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def two_runs(trained_run, tmp_path_factory):
    """Run `fast` benched on ONNX Runtime and OpenVINO (FP32, batch 1); run `plain` evaluated only."""
    tmp = tmp_path_factory.mktemp("speed")
    fast, plain = clone_run(trained_run, tmp / "fast"), clone_run(trained_run, tmp / "plain", seed=1)
    for run in (fast, plain):
        invoke("eval", run.path, "--no-figures")
    invoke("bench", fast.path, "--backends", "onnxruntime,openvino", *FAST_BENCH)
    return fast, plain


def table_row(text: str, name: str) -> list[str]:
    section = text.split("## Speed against accuracy", 1)[1].split("\n## ", 1)[0]
    line = next(line for line in section.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def expected_row(run: Path, name: str, latency_ms: float | None) -> list[str]:
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    minutes = sum(float(r["seconds"]) for r in history) / 60
    latency = "-" if latency_ms is None else f"{latency_ms:.2f}"
    return [name, "unet", "resnet18", "14.33", f"{100 * metrics['miou']:.2f}", latency, f"{minutes:.2f}",
            str(len(history))]


def bench_p50(run: Path, variant: str) -> float:
    bench = json.loads((run / "bench.json").read_text())
    return next(r["latency_ms"]["p50"] for r in bench["results"] if r["variant"] == variant
                and r["precision"] == "fp32" and r["batch_size"] == 1)


def test_report_shows_speed_against_accuracy_and_how_to_measure_the_missing_run(two_runs, tmp_path):
    fast, plain = two_runs
    out = tmp_path / "report"
    invoke("report", fast.path, plain.path, "--output", out)
    text = (out / "report.md").read_text()
    assert "latency ms (openvino fp32, batch 1)" in text  # the default: OpenVINO FP32 at batch 1
    assert table_row(text, "fast") == expected_row(fast.path, "fast", bench_p50(fast.path, "openvino"))
    assert table_row(text, "plain") == expected_row(plain.path, "plain", None)
    figure = out / "figures" / "speed_accuracy.png"
    assert "![speed against accuracy](figures/speed_accuracy.png)" in text and figure.read_bytes()[:4] == b"\x89PNG"
    speed = json.loads((out / "report.json").read_text())["speed_accuracy"]
    assert speed["variant"] == "openvino" and [r["name"] for r in speed["rows"]] == ["fast", "plain"]
    assert speed["rows"][0]["latency_ms"] == bench_p50(fast.path, "openvino")
    assert speed["rows"][0]["miou"] == json.loads((fast.path / "metrics.json").read_text())["miou"]
    assert speed["rows"][1]["latency_ms"] is None
    note = next(line for line in text.splitlines() if line.startswith("- **plain** has no"))
    assert "no bench.json" in note and "left out of the latency plot" in note
    command = re.search(r"`(segdeploy bench [^`]+)`", note).group(1)
    assert command == f"segdeploy bench {plain.path} --backends openvino --precision fp32 --batch-sizes 1"
    assert [m["command"] for m in speed["missing"]] == [command]

    invoke(*shlex.split(command)[1:])  # the command works as printed ...
    invoke("report", fast.path, plain.path, "--output", out)
    text = (out / "report.md").read_text()  # ... and gives the run its latency
    assert table_row(text, "plain") == expected_row(plain.path, "plain", bench_p50(plain.path, "openvino"))
    assert "**plain** has no" not in text


def test_another_latency_row_is_chosen_with_options(two_runs, tmp_path):
    fast, plain = two_runs
    out = tmp_path / "report"
    invoke("report", fast.path, "--output", out, "--latency-backend", "onnxruntime", "--latency-batch", "1")
    text = (out / "report.md").read_text()
    assert "latency ms (onnxruntime fp32, batch 1)" in text
    assert table_row(text, "fast")[5] == f"{bench_p50(fast.path, 'onnxruntime'):.2f}"
    result = CliRunner().invoke(app, ["report", str(fast.path), "--output", str(out), "--latency-backend", "onnxrun"])
    assert result.exit_code == 2 and "unknown backend 'onnxrun'" in result.output
    result = CliRunner().invoke(app, ["report", str(fast.path), "--output", str(out), "--latency-batch", "0"])
    assert result.exit_code == 2 and "--latency-batch must be at least 1, got 0" in result.output
    result = CliRunner().invoke(app, ["report", str(fast.path), "--output", str(out), "--latency-precision", "fp64"])
    assert result.exit_code == 2 and "--latency-precision must be one of fp32, fp16, int8, bf16" in result.output


def _row(variant: str, p50: float | None = 5.0, status: str = "ok", batch: int = 1, precision: str = "fp32") -> dict:
    return {"variant": variant, "backend": variant.split("+")[0], "precision": precision, "batch_size": batch,
            "status": status, "latency_ms": None if p50 is None else {"p50": p50}}


def test_rows_that_failed_timing_or_accuracy_are_not_used():
    bench = {"results": [_row("openvino"), _row("onnxruntime", status="failed: boom"), _row("torch", batch=8),
                         _row("torch+cl", precision="int8"), _row("onnxruntime+deploy")],
             "accuracy": [{"variant": "openvino", "precision": "fp32", "status": "failed: mismatch"},
                          {"variant": "onnxruntime+deploy", "precision": "fp32", "status": "ok"}]}
    assert list(usable_rows(bench, "fp32", 1)) == ["onnxruntime+deploy"]
    assert usable_rows(None, "fp32", 1) == {}


def test_the_default_variant_is_openvino_only_where_most_runs_have_it():
    both = {"results": [_row("onnxruntime"), _row("openvino")]}
    ort = {"results": [_row("onnxruntime")]}
    assert choose_variant([both, None], LatencyChoice()) == "openvino"
    assert choose_variant([both, ort], LatencyChoice()) == "onnxruntime"  # the one both runs have
    assert choose_variant([None, None], LatencyChoice()) is None
    assert choose_variant([both], LatencyChoice("onnxruntime")) == "onnxruntime"
