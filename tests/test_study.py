"""`segdeploy study`: the smoke study end to end, resume from disk, Ctrl-C, and the shipped files."""

from __future__ import annotations

import csv
import json
import shutil
import tomllib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from segdeploy.study import run as study_module
from segdeploy.cli import app
from segdeploy.core.errors import ConfigError, SegdeployError
from segdeploy.core.threads import torch_threads
from segdeploy.models.registry import MODELS
from segdeploy.study.plan import load_study, plan_settings
from segdeploy.study.run import run_study, stage_status
from segdeploy.study.layouts import write_seed_tables
from segdeploy.study.summary import write_summary

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """studies/smoke.toml run once through the CLI into a temporary folder (it trains with one thread; the
    process's thread count is the same before and after: `threads_before_smoke`)."""
    output = tmp_path_factory.mktemp("smoke") / "smoke"
    with torch_threads(2):  # not the 1 the study trains with, even in a 1-thread xdist worker
        SMOKE_THREADS["before"] = torch.get_num_threads()
        result = CliRunner().invoke(app, ["study", str(STUDIES / "smoke.toml"), "--output", str(output)])
        SMOKE_THREADS["after"] = torch.get_num_threads()
    assert result.exit_code == 0, result.output
    return load_study(STUDIES / "smoke.toml", output)


SMOKE_THREADS: dict[str, int] = {}


def test_study_leaves_torch_threads_as_they_were(smoke):
    assert smoke.runs and all(smoke.run_dir(p).config_path.is_file() for p in smoke.runs)
    assert "threads = 1" in smoke.run_dir(smoke.runs[0]).config_path.read_text()  # trained with 1 thread
    assert SMOKE_THREADS["after"] == SMOKE_THREADS["before"] != 1


def test_smoke_study_end_to_end(smoke):
    names = [p.name for p in smoke.runs]
    assert names == ["unet-r18-ce-s0", "unet-r18-ce-s1", "unet-r18-dice-ce-s0", "unet-r18-dice-ce-s1"]
    for planned in smoke.runs:
        run = smoke.run_dir(planned)
        assert all(stage_status(smoke, planned).values())
        cfg = run.load_config()
        assert cfg.train.seed == planned.cfg.train.seed and cfg.train.loss == planned.cfg.train.loss
        assert json.loads(run.parity.read_text())["results"][0]["passed"]
        assert {r["backend"] for r in json.loads(run.bench.read_text())["results"]} == {"torch", "onnxruntime"}
    markdown = (smoke.output / "summary.md").read_text()
    assert "| unet-r18-dice-ce (vs unet-r18-ce) |" in markdown and "onnxruntime img/s (b2)" in markdown

    rows = {r["config"]: r for r in csv.DictReader(open(smoke.output / "summary.csv"))}
    assert set(rows) == {"unet-r18-ce", "unet-r18-dice-ce"} and rows["unet-r18-ce"]["seeds"] == "2"
    # the summary's numbers are the runs' metrics.json, aggregated over seeds
    miou = {p.name: json.loads(smoke.run_dir(p).metrics.read_text())["miou"] for p in smoke.runs}
    ce = [miou["unet-r18-ce-s0"], miou["unet-r18-ce-s1"]]
    dice = [miou["unet-r18-dice-ce-s0"], miou["unet-r18-dice-ce-s1"]]
    assert float(rows["unet-r18-ce"]["miou_mean"]) == pytest.approx(sum(ce) / 2, rel=1e-5)
    assert float(rows["unet-r18-ce"]["miou_std"]) == pytest.approx(abs(ce[0] - ce[1]) / 2 ** 0.5, rel=1e-4, abs=1e-6)
    assert float(rows["unet-r18-dice-ce"]["miou_delta"]) == pytest.approx(sum(dice) / 2 - sum(ce) / 2, rel=1e-4, abs=1e-6)
    assert rows["unet-r18-ce"]["miou_delta"] == ""  # the baseline has no delta
    assert float(rows["unet-r18-ce"]["params_m_mean"]) == pytest.approx(14.33, abs=0.01)


def test_smoke_study_seed_tables(smoke):
    """seed_tables.md in the second seed's layout, from the same run directories as summary.csv."""
    tables = (smoke.output / "seed_tables.md").read_text()
    rows = {r["config"]: r for r in csv.DictReader(open(smoke.output / "summary.csv"))}
    sections = [line for line in tables.splitlines() if line.startswith("## ")]
    assert [s.split(" (")[0] for s in sections] == [
        "## Baseline results", "## Ablation and hyperparameter results for unet",
        "## Classes with the largest per-class IoU differences", "## Compute cost"]
    ce = rows["unet-r18-ce"]
    mean, std = float(ce["miou_mean"]), float(ce["miou_std"])
    assert f"| unet-r18-ce | unet | synthetic | {mean:.4f} ± {std:.4f} |" in tables  # Table 1: fractions
    dice = rows["unet-r18-dice-ce"]
    assert f"| unet-r18-dice-ce | synthetic | loss=dice-ce | {float(dice['miou_mean']):.4f} ± " in tables
    assert "mIoU published" not in tables and "IoU published" not in tables  # no published numbers for smoke
    # Table 7: per-class IoU means of the two configurations, the classes whose difference exceeds 0.05
    names = json.loads(smoke.run_dir(smoke.runs[0]).metrics.read_text())["class_names"]

    def per_class_mean(config, name, key):
        values = [json.loads(smoke.run_dir(p).metrics.read_text())["per_class"][name][key]
                  for p in smoke.runs if p.config_name == config]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    for index, name in enumerate(names):
        a, b = per_class_mean("unet-r18-ce", name, "iou"), per_class_mean("unet-r18-dice-ce", name, "iou")
        listed = f"| {index} {name} |" in tables
        assert listed == (a is not None and b is not None and abs(a - b) > 0.05), name
        if listed:
            assert f"| {index} {name} | {a:.3f} | {b:.3f} | {a - b:+.3f} |" in tables


def test_rerun_skips_finished_runs_and_continues_killed_one(smoke, monkeypatch):
    done, partial, killed = (smoke.run_dir(p) for p in smoke.runs[:3])
    before = {p.name: _mtimes(smoke.run_dir(p).path) for p in smoke.runs}
    partial.bench.unlink()  # stopped during bench: only bench runs again
    killed.checkpoint("best").unlink()  # stopped during training: trained again
    killed.checkpoint("last").unlink()
    killed.history.write_text(killed.history.read_text().splitlines()[0] + "\n")
    trained = []
    original = study_module.train_or_continue
    monkeypatch.setattr(study_module, "train_or_continue",
                        lambda planned, run, started: (trained.append((planned.name, started)),
                                                       original(planned, run, started)))
    run_study(smoke)
    assert trained == [(smoke.runs[2].name, True)]
    assert _mtimes(done.path) == before[smoke.runs[0].name]
    assert _mtimes(smoke.run_dir(smoke.runs[3]).path) == before[smoke.runs[3].name]
    after = _mtimes(partial.path)
    assert after["checkpoints/best.pt"] == before[smoke.runs[1].name]["checkpoints/best.pt"]
    assert after["metrics.json"] == before[smoke.runs[1].name]["metrics.json"]
    assert partial.bench.is_file()
    assert all(stage_status(smoke, smoke.runs[2]).values())


def test_ctrl_c_keeps_finished_runs_and_writes_summary(smoke, monkeypatch):
    target = smoke.runs[3]
    before = {p.name: _mtimes(smoke.run_dir(p).path) for p in smoke.runs[:3]}
    smoke.run_dir(target).parity.unlink()
    (smoke.output / "summary.md").unlink()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study_module, "run_stages", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(smoke)
    assert {p.name: _mtimes(smoke.run_dir(p).path) for p in smoke.runs[:3]} == before
    assert (smoke.output / "summary.md").is_file()
    assert not stage_status(smoke, target)["parity"]


def test_changed_config_is_refused(smoke, tmp_path):
    text = (STUDIES / "smoke.toml").read_text().replace("lr = 1e-3", "lr = 5e-4")
    (tmp_path / "smoke.toml").write_text(text)
    changed = load_study(tmp_path / "smoke.toml", smoke.output)
    smoke.run_dir(changed.runs[0]).metrics.unlink()
    with pytest.raises(SegdeployError, match=r"train.lr = 0.001, but the study now says 0.0005"):
        run_study(changed)


@pytest.mark.parametrize("name", ["smoke", "kvasir", "seg_review", "voc2007"])
def test_shipped_study_files_validate(name):
    path = STUDIES / f"{name}.toml"
    if name == "voc2007" and "sam2" not in MODELS:
        # the SAM2 rows name a model that another branch adds to the registry: until it is merged the
        # file is refused for exactly that reason and nothing else
        with pytest.raises(ConfigError, match=r"run sam2-frozen-ce: unknown model 'sam2'"):
            load_study(path)
        return
    result = CliRunner().invoke(app, ["study", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"valid: {path}" in " ".join(result.output.split())
    study = load_study(path)
    expected = {"smoke": 4, "kvasir": 4, "seg_review": 8, "voc2007": 9}[name]
    assert len(study.runs) == expected
    for planned in study.runs:  # the dry run lists every run by name
        assert f"│ {planned.name} " in result.output


SEG_REVIEW_TABLE_2 = [  # the second seed's Table 2: name, model, dataset, backbone, pretrained, OS, input
    ("deeplabv3-cityscapes", "deeplabv3", "cityscapes", "resnet50", "imagenet", 8, 256),
    ("deeplabv3-101-cityscapes", "deeplabv3", "cityscapes", "resnet101", "imagenet", 8, 256),
    ("deeplabv3-os16-cityscapes", "deeplabv3", "cityscapes", "resnet50", "imagenet", 16, 256),
    ("deeplabv3-kvasir", "deeplabv3", "kvasir", "resnet50", "imagenet", 8, 256),
    ("unet-cityscapes", "unet", "cityscapes", "resnet50", "imagenet", None, 256),
    ("unet-noimagenet-cityscapes", "unet", "cityscapes", "resnet50", "none", None, 256),
    ("unet-kvasir", "unet", "kvasir", "resnet50", "imagenet", None, 256),
    ("unet-512-kvasir", "unet", "kvasir", "resnet50", "imagenet", None, 512),
]

def test_seg_review_is_the_second_seeds_grid():
    study = load_study(STUDIES / "seg_review.toml")
    assert [p.name for p in study.runs] == [row[0] for row in SEG_REVIEW_TABLE_2]
    for planned, (name, model, dataset, encoder, weights, stride, size) in zip(study.runs, SEG_REVIEW_TABLE_2):
        cfg = planned.cfg
        assert (cfg.model.name, planned.labels["dataset"], cfg.model.encoder, cfg.model.encoder_weights,
                planned.labels["output_stride"], cfg.data.size) == (model, dataset, encoder, weights, stride, size)
        assert (cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay, cfg.train.batch_size, cfg.train.epochs,
                cfg.train.loss, cfg.train.label_smoothing, cfg.data.augment) == ("adam", 1e-4, 1e-4, 16, 50, "ce", 0.0, "none")
        assert cfg.data.num_classes == (20 if dataset == "cityscapes" else None)  # 19 train ids + void
        assert planned.cross_eval == (["supervisely"] if name in ("deeplabv3-kvasir", "unet-kvasir") else [])
    baselines = {p.name: p.baseline for p in study.runs}
    assert baselines == {"deeplabv3-cityscapes": None, "deeplabv3-101-cityscapes": "deeplabv3-cityscapes",
                         "deeplabv3-os16-cityscapes": "deeplabv3-cityscapes", "deeplabv3-kvasir": None,
                         "unet-cityscapes": None, "unet-noimagenet-cityscapes": "unet-cityscapes",
                         "unet-kvasir": None, "unet-512-kvasir": "unet-kvasir"}
    assert study.datasets["supervisely"].source.startswith("https://www.kaggle.com/datasets/tapakah68/")
    assert study.layout == "seg_review" and study.per_class_delta == ["deeplabv3-cityscapes", "unet-cityscapes"]


def test_voc2007_is_the_first_seeds_grid():
    study = load_study(STUDIES / "voc2007.toml")
    rows = [(p.name, p.cfg.model.name, p.cfg.model.encoder, p.cfg.train.loss, p.cfg.train.label_smoothing)
            for p in study.runs]
    assert rows == [
        ("unet-r18-ce", "unet", "resnet18", "ce", 0.0), ("unet-r34-ce", "unet", "resnet34", "ce", 0.0),
        ("unet-r34-dice-ce", "unet", "resnet34", "dice-ce", 0.1),
        ("deeplabv3plus-r50-ce", "deeplabv3plus", "resnet50", "ce", 0.0),
        ("deeplabv3plus-r101-ce", "deeplabv3plus", "resnet101", "ce", 0.0),
        ("deeplabv3plus-r50-dice-ce", "deeplabv3plus", "resnet50", "dice-ce", 0.1),
        ("deeplabv3plus-r101-dice-ce", "deeplabv3plus", "resnet101", "dice-ce", 0.1),
        ("sam2-frozen-ce", "sam2", "hiera-l", "ce", 0.0), ("sam2-frozen-dice-ce", "sam2", "hiera-l", "dice-ce", 0.1)]
    for planned in study.runs:
        cfg = planned.cfg
        assert (cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay, cfg.train.scheduler, cfg.data.size,
                cfg.data.augment, cfg.data.dataset) == ("adamw", 1e-4, 1e-4, "none", 256, "none", "voc")
        assert cfg.data.root.endswith("VOCdevkit/VOC2007")  # not the VOC2012 folder beside it
        assert cfg.model.head == "conv" and cfg.model.output_stride == 16
    assert study.runs[-1].cfg.model.encoder_weights == "facebook/sam2.1-hiera-large"


def test_dry_run_shows_the_seeds_hyperparameters():
    result = CliRunner().invoke(app, ["study", str(STUDIES / "seg_review.toml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert ("every run: decoder width 1.0, augment none, loss ce, label smoothing 0.0, optimizer adam, lr 0.0001, "
            "weight decay 0.0001, schedule cosine, batch 16, epochs 50, seed 42") in text
    common, own = plan_settings(load_study(STUDIES / "seg_review.toml"))  # the table's "settings" column
    assert own[1] == {"dataset": "cityscapes", "model": "deeplabv3", "encoder": "resnet101", "init": "imagenet",
                      "OS": "8", "size": "256", "classes": "20"}
    assert own[7] == {"dataset": "kvasir", "model": "unet", "encoder": "resnet50", "init": "imagenet", "OS": "-",
                      "size": "512", "classes": "-"}
    assert "encoder=resnet101" in text and "size=512" in text


def test_axes_product_and_names(tmp_path):
    (tmp_path / "grid.toml").write_text("""
[data]
size = 64
[axes]
model = ["unet", "deeplabv3plus"]
output_stride = [8, 16]
seed = [3]
""")
    study = load_study(tmp_path / "grid.toml")
    assert [p.name for p in study.runs] == ["unet-r18-ce-os8-s3", "unet-r18-ce-os16-s3",
                                            "deeplabv3plus-r18-ce-os8-s3", "deeplabv3plus-r18-ce-os16-s3"]
    assert study.output == tmp_path / "grid"
    assert [p.cfg.model.output_stride for p in study.runs] == [8, 16, 8, 16]


@pytest.mark.parametrize("text, message", [
    ("[study]\nstages = ['train']\n", "unknown stage 'train'"),
    ("[study]\nfoo = 1\n", "unknown key study.foo"),
    ("[[runs]]\nname = 'a'\nmodel = 'unet'\nbaseline = 'b'\n", "baseline 'b' is not a configuration"),
    ("[[runs]]\nname = 'a'\n[[runs]]\nname = 'a'\n", "two runs are both named 'a'"),
    ("[[runs]]\nencoder = 'resnet7'\n", "unknown encoder 'resnet7'"),
    ("[axes]\nloss = ['ce', 'focal']\n", "unknown loss 'focal'"),
    ("[axes]\ndataset = ['nope']\n", "unknown dataset 'nope'"),
    ("[train]\nepochs = 'many'\n", "train.epochs: expected int"),
    ("[study]\nstages = ['parity']\n", "need the export stage"),
    ("[study]\nlayout = 'nope'\n", "unknown table layout 'nope' (known: seg_review, voc2007)"),
    ("[study]\npublished = 'p.toml'\n", "study.published needs study.layout"),
    ("[study]\nlayout = 'voc2007'\npublished = 'p.toml'\n", "published numbers file not found"),
    ("[study]\nlayout = 'seg_review'\nper_class_delta = ['a']\n[[runs]]\nname = 'a'\n",
     "per_class_delta must name two configurations of this study"),
])
def test_bad_study_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["study", str(path), "--dry-run"])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_failing_run_is_named_and_earlier_runs_kept(tmp_path):
    (tmp_path / "s.toml").write_text("""
[data]
size = 32
synthetic_images = 24
max_images = 4
[train]
epochs = 1
batch_size = 4
device = "cpu"
[[runs]]
name = "fine"
[[runs]]
name = "no-data"
dataset = "kvasir"
data.root = "/nonexistent/kvasir"
""")
    result = CliRunner().invoke(app, ["study", str(tmp_path / "s.toml")])
    assert result.exit_code == 2
    assert "study s, run no-data: data root not found: /nonexistent/kvasir" in " ".join(result.output.split())
    study = load_study(tmp_path / "s.toml")
    assert stage_status(study, study.runs[0])["train"]
    assert "| fine |" in (tmp_path / "s" / "summary.md").read_text()


def test_only_must_match_a_run(tmp_path):
    (tmp_path / "s.toml").write_text("[[runs]]\nname = 'a'\n")
    with pytest.raises(ConfigError, match="--only b matches no run"):
        run_study(load_study(tmp_path / "s.toml"), only=["b"])


SEEDS = Path(__file__).resolve().parent.parent.parent / "shared" / "seeds"


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the seed texts are not beside this checkout (../shared/seeds)")
def test_published_numbers_are_the_seeds_rows():
    """Every row of studies/published/*.toml is a row of its seed's text, number for number as printed."""
    first, second = (next(SEEDS.glob(f"{prefix}_*.txt")).read_text() for prefix in ("000", "001"))
    voc = tomllib.loads((STUDIES / "published" / "voc2007.toml").read_text())
    for row in voc["main"]:
        assert "\t".join([row["label"], *(f"{row[k]:.2f}" for k in ("pixel_accuracy", "miou", "mean_dice", "hd95"))]) in first
    review = tomllib.loads((STUDIES / "published" / "seg_review.toml").read_text())
    metrics = ("miou", "mean_dice", "pixel_accuracy")
    for row in review["baselines"]:
        assert "\t".join([row["model"], row["dataset"], *(f"{row[k]:.4f}" for k in metrics)]) in second
    for row in review["ablations"]:
        assert "\t".join([row["run"], row["dataset"], row["variant"], *(f"{row[k]:.4f}" for k in metrics)]) in second
    for row in review["cross"]:
        cells = [c for k in metrics for c in (f"{row[k]:.4f}", f"{row[f'drop_{k}']:.4f}" if f"drop_{k}" in row else "-")]
        assert "\t".join(cells) in second
    for row in review["per_class"]:
        cells = [f"{row[k]:+.3f}" if k.startswith("delta") else f"{row[k]:.3f}"
                 for k in ("a_iou", "b_iou", "delta_iou", "a_dice", "b_dice", "delta_dice")]
        assert "\t".join([str(row["class"]), *cells]) in second
    assert len(voc["main"]) == 9 and len(review["ablations"]) == 7 and len(review["per_class"]) == 6


@pytest.mark.parametrize("path", sorted(STUDIES.glob("results/*/*.toml")), ids=lambda p: p.parent.name)
def test_committed_study_results_files_validate(path):
    """The study files of committed results still load with today's keys (output: their own folder)."""
    study = load_study(path, path.parent)
    assert study.runs and all(study.run_dir(p).config_path.is_file() for p in study.runs)


def test_committed_seed_tables_render_from_committed_runs(tmp_path):
    """studies/results/seg_review_kvasir/seed_tables.md is what the seed layout makes of the committed runs."""
    results = STUDIES / "results" / "seg_review_kvasir"
    shutil.copytree(results, tmp_path / "copy")
    study = load_study(results / "seg_review_kvasir_cpu.toml", tmp_path / "copy")
    write_seed_tables(study)

    def body(text: str) -> list[str]:  # all but the line with the date it was written
        return [line for line in text.splitlines() if not line.startswith("Ours:")]

    assert body((tmp_path / "copy" / "seed_tables.md").read_text()) == body((results / "seed_tables.md").read_text())
    text = (results / "seed_tables.md").read_text()
    assert "| deeplabv3-kvasir | deeplabv3 | kvasir |" in text and "| 0.8830 |" in text  # ours, then Table 1's
    assert "| kvasir → supervisely | – | 0.3959 |" in text  # not run here (no data), the seed's number beside


def test_changed_config_of_a_finished_run_is_refused_and_not_summarised(smoke, tmp_path):
    """A finished run is not 'done, skipped' under a configuration it was not trained with, and the summary
    never shows its numbers under the new configuration."""
    target = smoke.runs[1]
    assert all(stage_status(smoke, target).values())
    text = (STUDIES / "smoke.toml").read_text().replace("lr = 1e-3", "lr = 2e-3")
    (tmp_path / "smoke.toml").write_text(text)
    before = _mtimes(smoke.run_dir(target).path)
    summary = (smoke.output / "summary.md").read_text()
    result = CliRunner().invoke(app, ["study", str(tmp_path / "smoke.toml"), "--output", str(smoke.output),
                                      "--only", target.name])
    assert result.exit_code == 2, result.output
    assert "train.lr = 0.001, but the study now says 0.002" in " ".join(result.stderr.split())
    assert "done, skipped" not in result.output
    assert _mtimes(smoke.run_dir(target).path) == before
    assert (smoke.output / "summary.md").read_text() == summary  # refused before any work: nothing rewritten
    write_summary(load_study(tmp_path / "smoke.toml", smoke.output))
    assert target.name not in (smoke.output / "summary.md").read_text()  # never shown under the new config
    write_summary(smoke)
    dry = CliRunner().invoke(app, ["study", str(tmp_path / "smoke.toml"), "--output", str(smoke.output), "--dry-run"])
    assert dry.exit_code == 0 and "config differs" in dry.output
