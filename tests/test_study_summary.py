"""Summary arithmetic against hand-computed values, from run directories written by hand."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest

from segdeploy.core.config import config_to_toml
from segdeploy.core.errors import ConfigError
from segdeploy.study.plan import load_study
from segdeploy.evaluation.stats import format_mean_std, mean_std
from segdeploy.study.run import write_summaries
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


# --------------------------------------------------------------------------- seed table layouts


def _seed_run(folder, cfg, miou, per_class=None, cross=None, seconds=(3.0,)):
    """A run directory with metrics.json (with per-class values) and, optionally, cross-dataset metrics."""
    _fake_run(folder, cfg, [miou] * len(seconds), seconds=seconds)
    metrics = json.loads((folder / "metrics.json").read_text())
    names = list(per_class or {})
    metrics.update(class_names=names, per_class={n: {"iou": iou, "dice": dice} for n, (iou, dice) in (per_class or {}).items()})
    (folder / "metrics.json").write_text(json.dumps(metrics))
    for target, values in (cross or {}).items():
        (folder / f"metrics.cross-{target}.json").write_text(json.dumps(values))


SEG_REVIEW_HAND = """
[study]
name = "hand2"
layout = "seg_review"
published = "pub.toml"
per_class_delta = ["dl", "unet"]
[datasets.a]
dataset = "synthetic"
[datasets.b]
dataset = "synthetic"
split_seed = 3
[model]
encoder = "resnet50"
output_stride = 8
[[runs]]
name = "dl"
model = "deeplabv3"
dataset = "a"
cross_eval = ["b"]
[[runs]]
name = "dl-os16"
model = "deeplabv3"
dataset = "a"
output_stride = 16
baseline = "dl"
[[runs]]
name = "unet"
model = "unet"
dataset = "a"
encoder_weights = "imagenet"
[[runs]]
name = "unet-random"
model = "unet"
dataset = "a"
baseline = "unet"
"""

SEG_REVIEW_PUBLISHED = """
[source]
title = "Hand-made review"
setup = "somewhere else"
[[baselines]]
run = "dl"
miou = 0.5171
mean_dice = 0.6459
pixel_accuracy = 0.9041
[[ablations]]
run = "unet-random"
miou = 0.3211
mean_dice = 0.3984
pixel_accuracy = 0.8653
[[cross]]
run = "dl"
test = "b"
miou = 0.3959
mean_dice = 0.4953
pixel_accuracy = 0.7096
drop_miou = 0.4872
drop_mean_dice = 0.4407
drop_pixel_accuracy = 0.2567
[[per_class]]
a = "dl"
b = "unet"
class = 2
a_iou = 0.585
b_iou = 0.137
delta_iou = 0.449
a_dice = 0.739
b_dice = 0.662
delta_dice = 0.076
"""


def test_seed2_tables_by_hand(tmp_path):
    """Every table of the second seed's layout from hand-written runs: values, drops, variants, the per-class
    selection, and the published numbers next to ours (also for a configuration that never trained)."""
    (tmp_path / "s.toml").write_text(SEG_REVIEW_HAND)
    (tmp_path / "pub.toml").write_text(SEG_REVIEW_PUBLISHED)
    study = load_study(tmp_path / "s.toml")
    runs = {p.name: p for p in study.runs}
    _seed_run(study.run_dir(runs["dl"]).path, runs["dl"].cfg, 0.6,
              per_class={"road": (0.90, 0.94), "car": (0.30, 0.46), "bus": (0.50, 0.66)},
              cross={"b": {"miou": 0.25, "mean_dice": 0.5, "pixel_accuracy": 0.75}}, seconds=(10.0, 14.0))
    _seed_run(study.run_dir(runs["dl-os16"]).path, runs["dl-os16"].cfg, 0.55)
    _seed_run(study.run_dir(runs["unet"]).path, runs["unet"].cfg, 0.5,
              per_class={"road": (0.88, 0.93), "car": (0.50, 0.66), "bus": (0.48, 0.65)})
    write_summaries(study)
    tables = (tmp_path / "hand2" / "seed_tables.md").read_text()
    assert "Published: Hand-made review. Their setup: somewhere else (`pub.toml`)" in tables
    # Table 1: ours (pixel accuracy 0.9, mean Dice = mIoU + 0.1 by _fake_run), then the seed's number
    assert ("| dl | deeplabv3 | a | 0.6000 (n=1) | 0.5171 | 0.7000 (n=1) | 0.6459 | 0.9000 (n=1) | 0.9041 |"
            in tables)
    assert "| unet | unet | a | 0.5000 (n=1) | – |" in tables  # no published row for it
    # Tables 3/4: variants named as the seed names them; the untrained ablation keeps its published row
    assert "| dl-os16 | a | OS=16 | 0.5500 (n=1) | – |" in tables
    assert "| unet-random | a | Random init encoder | – | 0.3211 | – | 0.3984 | – | 0.8653 |" in tables
    # Tables 5/6: in-domain row, then cross-domain with drop = in-domain - cross-domain
    assert "| a → a | 0.6000 (n=1) | – | - | - | 0.7000 (n=1) | – | - | - | 0.9000 (n=1) | – | - | - |" in tables
    assert ("| a → b | 0.2500 (n=1) | 0.3959 | 0.3500 | 0.4872 | 0.5000 (n=1) | 0.4953 | 0.2000 | 0.4407 | "
            "0.7500 (n=1) | 0.7096 | 0.1500 | 0.2567 |") in tables
    assert tables.count("| a →") == 2  # only `dl` has a cross-dataset evaluation
    # Table 7: |delta IoU| > 0.05 (car), plus the class the published table lists (bus); road differs by 0.02
    assert "| 1 car | 0.300 | – | 0.500 | – | -0.200 | – | 0.460 | – | 0.660 | – | -0.200 | – |" in tables
    assert "| 2 bus | 0.500 | 0.585 | 0.480 | 0.137 | +0.020 | +0.449 | 0.660 | 0.739 | 0.650 | 0.662 | +0.010 | +0.076 |" in tables
    assert "| 0 road |" not in tables
    # compute cost: mean seconds per epoch from history.csv
    assert "| dl | 256 | 12.0 (n=1) | 200 (n=1) |" in tables


def test_voc2007_tables_by_hand(tmp_path):
    (tmp_path / "s.toml").write_text("""
[study]
name = "voc"
layout = "voc2007"
published = "pub.toml"
[axes]
seed = [0, 1]
[[runs]]
name = "unet-r18-ce"
[[runs]]
name = "unet-r34-ce"
encoder = "resnet34"
baseline = "unet-r18-ce"
""")
    (tmp_path / "pub.toml").write_text("""
[[main]]
run = "unet-r18-ce"
label = "U-Net (ResNet-18, CE)"
pixel_accuracy = 78.69
miou = 13.88
mean_dice = 19.20
hd95 = 15.54
""")
    study = load_study(tmp_path / "s.toml")
    values = {"unet-r18-ce-s0": (0.40, 30.0), "unet-r18-ce-s1": (0.60, 34.0), "unet-r34-ce-s0": (0.70, 20.0),
              "unet-r34-ce-s1": (0.80, 22.0)}
    for planned in study.runs:
        miou, hd95 = values[planned.name]
        _fake_run(study.run_dir(planned).path, planned.cfg, [0.1, miou], hd95=hd95)
    write_summaries(study)
    tables = (tmp_path / "voc" / "seed_tables.md").read_text()
    # rates in % and HD95 in px, mean ± sample std over the two seeds, the seed's number beside ours
    assert ("| unet-r18-ce | unet (resnet18, ce) | 90.00 ± 0.00 | 78.69 | 50.00 ± 14.14 | 13.88 | 60.00 ± 14.14 | "
            "19.20 | 32.00 ± 2.83 | 15.54 |") in tables
    assert "| unet-r34-ce | unet (resnet34, ce) | 90.00 ± 0.00 | – | 75.00 ± 7.07 | – |" in tables
    assert "| unet-r18-ce | unet (resnet18, ce) | 3.0 ± 0.0 | 200 ± 0 | 2 |" in tables  # s/epoch, peak MB, runs


@pytest.mark.parametrize("text, message", [
    ("[[tables]]\nrun = 'a'\n", "unknown table 'tables' (this layout reads: main)"),
    ("[[main]]\nrun = 'a'\nmiou = [1, 2]\n", "main[0].miou must be a number or a name"),
    ("main = 3\n", "main must be an array of tables"),
])
def test_bad_published_files(tmp_path, text, message):
    (tmp_path / "s.toml").write_text("[study]\nlayout = 'voc2007'\npublished = 'pub.toml'\n")
    (tmp_path / "pub.toml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_study(tmp_path / "s.toml")
