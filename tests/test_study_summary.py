"""Summary arithmetic against hand-computed values, from run directories written by hand."""

from __future__ import annotations

import csv
import json
import math

import pytest

from segdeploy.core.config import config_to_toml
from segdeploy.study.plan import load_study
from segdeploy.evaluation.stats import format_mean_std, mean_std
from segdeploy.study.summary import add_deltas, aggregate, write_summary


def ms(stats: dict) -> tuple:
    return stats["mean"], stats["std"]


def test_mean_std_by_hand():
    assert ms(mean_std([0.5, 0.7, 0.9])) == pytest.approx((0.7, 0.2))  # sqrt((0.04 + 0 + 0.04) / 2)
    assert mean_std([0.25]) == {"mean": 0.25, "std": None, "n": 1}  # one run: no spread, never a 0 std
    assert ms(mean_std([None, 1.0, 3.0])) == pytest.approx((2.0, math.sqrt(2)))
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}
    assert format_mean_std(mean_std([0.25]), "{:.2f}".format) == "0.25 (n=1)"
    assert format_mean_std(mean_std([1.0, 3.0]), "{:.1f}".format) == "2.0 ± 1.4"


def test_aggregate_and_deltas_by_hand():
    rows = [
        {"run": "a-s0", "config": "a", "baseline": None, "miou": 0.60, "hd95": 10.0},
        {"run": "a-s1", "config": "a", "baseline": None, "miou": 0.70, "hd95": 12.0},
        {"run": "b-s0", "config": "b", "baseline": "a", "miou": 0.50, "hd95": None},
        {"run": "b-s1", "config": "b", "baseline": "a", "miou": 0.56, "hd95": 20.0},
    ]
    configs = add_deltas(aggregate(rows, ["miou", "hd95"]))
    a, b = configs
    assert a["seeds"] == 2 and a["runs"] == ["a-s0", "a-s1"]
    assert ms(a["values"]["miou"]) == pytest.approx((0.65, 0.0707107), rel=1e-5)
    assert ms(a["values"]["hd95"]) == pytest.approx((11.0, 1.4142136), rel=1e-5)
    assert a["deltas"] == {}
    assert ms(b["values"]["miou"]) == pytest.approx((0.53, 0.0424264), rel=1e-5)
    assert ms(b["values"]["hd95"]) == (20.0, None)  # one seed has no HD95: mean of the others, no std
    assert b["deltas"]["miou"] == pytest.approx(-0.12)
    assert b["deltas"]["hd95"] == pytest.approx(9.0)


def _fake_run(folder, cfg, mious, hd95=None, seconds=(2.0, 4.0), bench_ms=None):
    """A run directory as train/eval/bench would leave it, written by hand."""
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(config_to_toml(cfg))
    (folder / "history.csv").write_text(
        "epoch,train_loss,val_loss,val_miou,val_mean_dice,val_pixel_accuracy,lr,seconds,peak_gpu_memory_mb\n"
        + "".join(f"{i + 1},1,1,{m},{m},{m},0.001,{s},{100 * (i + 1)}\n"
                  for i, (m, s) in enumerate(zip(mious, seconds))))
    metrics = {"pixel_accuracy": 0.9, "miou": mious[-1], "mean_dice": mious[-1] + 0.1, "per_class": {}}
    if hd95 is not None:
        metrics["hd95"] = hd95
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if bench_ms is not None:
        (folder / "bench.json").write_text(json.dumps({"results": [
            {"backend": "onnxruntime", "precision": "fp32", "batch_size": 1,
             "latency_ms": {"p50": bench_ms, "mean": bench_ms}, "throughput_ips": 1000 / bench_ms},
            {"backend": "onnxruntime", "precision": "fp32", "batch_size": 8,
             "latency_ms": {"p50": 4 * bench_ms, "mean": 4 * bench_ms}, "throughput_ips": 2000 / bench_ms},
            {"backend": "torch", "precision": "fp32", "batch_size": 8, "status": "oom"},  # a failed cell
        ]}))


def test_summary_files_from_run_directories(tmp_path):
    (tmp_path / "s.toml").write_text("""
[study]
name = "hand"
[axes]
seed = [0, 1]
[[runs]]
name = "base"
[[runs]]
name = "ablation"
loss = "dice-ce"
baseline = "base"
""")
    study = load_study(tmp_path / "s.toml")
    values = {"base-s0": (0.4, 30.0, 10.0), "base-s1": (0.6, 34.0, 14.0),
              "ablation-s0": (0.7, 20.0, 6.0), "ablation-s1": (0.8, None, 8.0)}
    for planned in study.runs:
        miou, hd95, ms = values[planned.name]
        _fake_run(study.run_dir(planned).path, planned.cfg, [0.1, miou], hd95=hd95, bench_ms=ms)
    write_summary(study)
    rows = {r["config"]: r for r in csv.DictReader(open(tmp_path / "hand" / "summary.csv"))}
    base, ablation = rows["base"], rows["ablation"]
    assert float(base["miou_mean"]) == pytest.approx(0.5)
    assert float(base["miou_std"]) == pytest.approx(math.sqrt(0.02))
    assert float(ablation["miou_delta"]) == pytest.approx(0.25)
    assert float(base["hd95_mean"]) == pytest.approx(32.0) and float(ablation["hd95_delta"]) == pytest.approx(-12.0)
    assert float(base["epoch_seconds_mean"]) == pytest.approx(3.0)
    assert float(base["peak_train_memory_mb_mean"]) == pytest.approx(200.0)
    assert float(base["bench:onnxruntime:latency_ms_mean"]) == pytest.approx(12.0)
    assert float(ablation["bench:onnxruntime:throughput_ips_delta"]) == pytest.approx(
        (2000 / 6 + 2000 / 8) / 2 - (2000 / 10 + 2000 / 14) / 2)
    assert not any(key.startswith("bench:torch") for key in base)  # the OOM cell has no numbers
    markdown = (tmp_path / "hand" / "summary.md").read_text()
    assert "| ablation (vs base) |" in markdown
    assert "75.00 ± 7.07 (+25.00)" in markdown  # mIoU % of the ablation: mean ± std (delta)
    assert "HD95 px" in markdown and "onnxruntime ms (b1, p50)" in markdown and "onnxruntime img/s (b8)" in markdown
