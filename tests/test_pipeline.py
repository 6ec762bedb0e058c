"""The skeleton chain on a tiny model: train, eval, export, parity, bench, and their files."""

import csv
import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from conftest import clone_run, tiny_config
from segdeploy.bench.sweep import run_bench
from segdeploy.evaluation.evaluate import evaluate
from segdeploy.core.fileio import sha256_file
from segdeploy.core.config import BenchConfig, EvalConfig, ParityConfig
from segdeploy.core.errors import SegdeployError
from segdeploy.evaluation.parity import run_parity
from segdeploy.models.checkpoint import load_model
from segdeploy.training.loop import train
from segdeploy.training.resume import HISTORY_FIELDS


def test_run_dir_layout(trained_run):
    cfg = trained_run.load_config()
    assert cfg.model.num_classes == 4 and cfg.data.size == 64
    assert trained_run.checkpoint("best").is_file() and trained_run.checkpoint("last").is_file()
    rows = list(csv.DictReader(trained_run.history.open()))
    assert [int(r["epoch"]) for r in rows] == [1]
    assert list(rows[0]) == HISTORY_FIELDS
    assert 0 <= float(rows[0]["val_miou"]) <= 1 and float(rows[0]["seconds"]) > 0
    with Image.open(trained_run.curves) as curves:  # learning curves, written after every epoch
        assert curves.format == "PNG" and curves.size == (1000, 400)
    sidecar = json.loads(trained_run.onnx_sidecar().read_text())
    assert sidecar["sha256"] == sha256_file(trained_run.onnx_path())
    assert sidecar["exporter"] == "dynamo" and sidecar["opset"] == 18 and sidecar["input_size"] == 64 and len(sidecar["class_names"]) == 4
    onnx.checker.check_model(str(trained_run.onnx_path()))


def test_dynamo_export_traces_in_place_activations_out_of_place_and_gives_them_back(tmp_path, monkeypatch):
    import onnxruntime as ort

    from segdeploy.export.onnx import export_onnx

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(inplace=True),
                                torch.nn.Conv2d(4, 2, 1), torch.nn.Hardswish(inplace=True)).eval()
    flags_while_tracing, real_export = [], torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: flags_while_tracing.append(
        [model[1].inplace, model[3].inplace]) or real_export(*args, **kwargs))
    export_onnx(model, tmp_path / "model.onnx", 16, exporter="dynamo")
    assert flags_while_tracing == [[False, False]] and [model[1].inplace, model[3].inplace] == [True, True]
    x = torch.randn(3, 3, 16, 16)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], model(x).numpy(), atol=1e-5)


def test_two_step_training_changes_weights_and_loss(tmp_path):
    cfg = tiny_config(train={"max_steps": 2, "epochs": 2, "loss": "dice-ce"})
    run = train(cfg, tmp_path / "r")
    rows = list(csv.DictReader(run.history.open()))
    assert len(rows) == 2
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    trained, _, _ = load_model(run, "last")
    torch.manual_seed(cfg.train.seed)
    from segdeploy.models.registry import build_model

    fresh = build_model(cfg.model, 4, 64)
    assert not torch.equal(fresh.state_dict()["segmentation_head.0.weight"],
                           trained.state_dict()["segmentation_head.0.weight"])


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A writable view of the shared tiny run: the commands below write into it."""
    return clone_run(trained_run, tmp_path / "run")


def test_eval_metrics_json(run_copy):
    result = evaluate(run_copy, EvalConfig(["torch"]))
    saved = json.loads(run_copy.metrics.read_text())
    assert saved["miou"] == pytest.approx(result["miou"])
    cm = np.array(saved["confusion_matrix"])
    assert cm.sum() == saved["images"] * 64 * 64
    assert set(saved) >= {"pixel_accuracy", "miou", "mean_dice", "per_class", "dataset", "split", "backend"}


def test_parity_onnxruntime_passes_and_schema(run_copy):
    report = run_parity(run_copy, ParityConfig(["onnxruntime"]))
    assert report["reference"] == "torch"
    (row,) = report["results"]
    assert set(row) >= {"backend", "precision", "max_abs_err", "mean_abs_err", "argmax_agreement",
                        "miou_reference", "miou", "miou_delta", "passed"}
    assert row["passed"] and row["argmax_agreement"] >= 0.999 and row["max_abs_err"] < 1e-3
    assert json.loads(run_copy.parity.read_text()) == json.loads(json.dumps(report))


def test_parity_fails_on_a_different_model(trained_run, tmp_path):
    """A tolerance that a wrong export would break must really break: swap in another model's ONNX."""
    from segdeploy.export.onnx import export_onnx
    from segdeploy.models.registry import build_model

    copy = clone_run(trained_run, tmp_path / "copy")
    torch.manual_seed(123)
    other = build_model(copy.load_config().model, 4, 64).eval()
    export_onnx(other, copy.onnx_path(), 64)
    with pytest.raises(SegdeployError, match="is not the graph model.json describes"):
        run_parity(copy, ParityConfig(["onnxruntime"]))  # the sidecar check sees the swap first
    sidecar = json.loads(copy.onnx_sidecar().read_text())
    copy.onnx_sidecar().unlink()  # the link to the shared run's sidecar: this clone gets its own
    copy.onnx_sidecar().write_text(json.dumps({**sidecar, "sha256": sha256_file(copy.onnx_path())}))
    (row,) = run_parity(copy, ParityConfig(["onnxruntime"]))["results"]  # a sidecar that lies: parity itself
    assert not row["passed"] and row["max_abs_err"] > 1e-2


def test_bench_schema(run_copy):
    # in-process: the schema is the subject (cells in child processes: tests/test_bench.py)
    report = run_bench(run_copy, BenchConfig(["torch", "onnxruntime"], batch_sizes=[1, 2], warmup=1, iters=3,
                                             warmup_window=2, max_warmup=3, threads=2, device="cpu", max_images=4,
                                             isolate=False))
    env = report["environment"]
    assert env["cpu"] and env["torch_threads"] == 2 and env["packages"]["torch"]
    assert [(r["backend"], r["batch_size"]) for r in report["results"]] == [
        ("torch", 1), ("torch", 2), ("onnxruntime", 1), ("onnxruntime", 2)]
    for r in report["results"]:
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert r["throughput_ips"] > 0 and r["peak_memory_mb"] > 0
        assert r["memory_kind"] == "process_peak_rss" and r["device"] == "cpu"
