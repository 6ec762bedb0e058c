"""`segdeploy deploy` through the CLI on a real (tiny) run that parity and bench measured: the bundle, its
Triton repository, its refusals, and its standalone predict.py in a torch-free virtual environment."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.core import fileio, pixels
from segdeploy.core.rundir import RunDir
from segdeploy.deploy import bundle
from conftest import clone_run

pytestmark = pytest.mark.openvino  # parity and bench run OpenVINO in this process


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def measured(trained_run, tmp_path_factory) -> tuple[RunDir, str]:
    """A clone of the tiny trained run, checked by parity and timed by bench (onnxruntime, openvino), then
    deployed with every passing variant in a Triton repository (RUN/deploy/); and what deploy printed."""
    run = clone_run(trained_run, tmp_path_factory.mktemp("deploy") / "run")
    result = invoke("parity", run.path, "--backends", "onnxruntime,openvino")
    assert result.exit_code == 0, result.output
    result = invoke("bench", run.path, "--backends", "onnxruntime,openvino", "--batch-sizes", "1,2",
                    "--iters", "5", "--warmup", "1", "--warmup-window", "2", "--max-warmup", "3", "--in-process")
    assert result.exit_code == 0, result.output
    triton = ["--triton-all"] if importlib.util.find_spec("tritonclient") else []  # the `triton` extra
    result = invoke("deploy", run.path, *triton)
    assert result.exit_code == 0, result.output
    return run, result.output


@pytest.fixture
def measured_run(measured) -> RunDir:
    return measured[0]


def copy_measured(run: RunDir, target: Path) -> RunDir:
    clone = clone_run(run, target)
    for name in ("parity.json", "bench.json"):
        shutil.copy(run.path / name, clone.path / name)
    return clone


def deployable_ok_rows(run: RunDir) -> list[dict]:
    return [r for r in run.read_bench()["results"] if r["status"] == "ok"]


def test_the_bundle_holds_the_fastest_measured_variant_as_it_was_measured(measured):
    measured_run, printed = measured
    manifest = json.loads(measured_run.deploy_manifest.read_text())
    fastest = min(deployable_ok_rows(measured_run), key=lambda r: r["latency_ms"]["p50"])
    assert (manifest["variant"], manifest["batch_size"]) == (fastest["variant"], fastest["batch_size"])
    assert "chosen" in printed and "slower: p50" in printed
    folder = measured_run.deploy_dir
    checked = next(r for r in measured_run.read_parity()["results"] if r["variant"] == manifest["variant"])
    assert fileio.sha256_file(folder / manifest["model_file"]) == checked["artifact_sha256"] == manifest["model_sha256"]
    for name, sha in manifest["files"].items():
        assert fileio.sha256_file(folder / name) == sha, name
    assert (folder / "pixels.py").read_bytes() == Path(pixels.__file__).read_bytes()
    assert (folder / "predict.py").read_bytes() == bundle.PREDICTOR.read_bytes()
    names = measured_run.read_json(measured_run.onnx_sidecar("fp32"))["class_names"]
    assert json.loads((folder / "classes.json").read_text())["names"] == names
    assert manifest["measured"]["environment"]["cpu"] == measured_run.read_bench()["environment"]["cpu"]


def test_every_triton_config_parses_and_matches_its_graph(measured_run):
    import onnx
    from google.protobuf import text_format

    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="needs tritonclient (pip install 'segdeploy[triton]')")

    from segdeploy.deploy.graph_io import read_io

    models = sorted(p for p in (measured_run.deploy_dir / "triton").iterdir())
    passing = {(r["variant"], r["precision"]) for r in deployable_ok_rows(measured_run)}
    assert len(models) == len(passing) >= 2  # --triton-all: onnxruntime and openvino
    bench = measured_run.read_bench()["results"]
    for folder in models:
        config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.name == folder.name
        io = read_io(folder / "1" / "model.onnx")
        onnx.checker.check_model(str(folder / "1" / "model.onnx"))
        for declared, graph in zip([*config.input, *config.output], io["inputs"] + io["outputs"]):
            assert declared.name == graph["name"]
            assert list(declared.dims) == [d if isinstance(d, int) else -1 for d in graph["shape"][1:]]
        variant = "openvino" if config.backend == "openvino" else "onnxruntime"
        assert config.platform == ("" if variant == "openvino" else "onnxruntime_onnx")
        rows = [r for r in bench if r["variant"] == variant and r["status"] == "ok"]
        assert config.max_batch_size == max(r["batch_size"] for r in rows)
        best = max(rows, key=lambda r: r["throughput_ips"])["batch_size"]
        assert list(config.dynamic_batching.preferred_batch_size) == [best]


def test_missing_measurements_are_refused_with_the_commands_to_run(trained_run, tmp_path):
    run = clone_run(trained_run, tmp_path / "run")
    result = invoke("deploy", run.path)
    assert result.exit_code == 2
    assert "parity.json and bench.json not found" in result.output and "segdeploy parity" in result.output
    assert "segdeploy bench" in result.output and not (run.path / "deploy").exists()


def test_measurements_of_another_machine_or_of_older_files_are_refused(measured_run, tmp_path):
    run = copy_measured(measured_run, tmp_path / "other")
    bench = run.read_bench()
    fileio.write_json(run.bench, {**bench, "environment": {**bench["environment"], "cpu": "Some Other CPU"}})
    result = invoke("deploy", run.path)
    assert result.exit_code == 2 and "bench.json was measured on another machine" in result.output
    assert "'Some Other CPU' then" in result.output
    fileio.write_json(run.bench, bench)
    parity = run.read_parity()
    parity["results"][0]["artifact_sha256"] = "0" * 64  # a graph exported again since parity checked it
    fileio.write_json(run.parity, parity)
    result = invoke("deploy", run.path)
    assert result.exit_code == 2 and "older than the files here" in result.output
    assert "segdeploy parity" in result.output and not (run.path / "deploy").exists()


def test_graphs_of_an_older_checkpoint_are_refused(measured_run, tmp_path):
    run = copy_measured(measured_run, tmp_path / "retrained")
    best = run.checkpoint("best")
    data = best.read_bytes()
    best.unlink()  # the clone's symlink, replaced by a checkpoint with other bytes (trained again)
    best.write_bytes(data + b"retrained")
    result = invoke("deploy", run.path)
    assert result.exit_code == 2 and "trained again since" in result.output, result.output


def test_nothing_inside_the_budget_is_exit_1_and_writes_nothing(measured_run, tmp_path):
    run = copy_measured(measured_run, tmp_path / "strict")
    parity = run.read_parity()
    for row in parity["results"]:  # every checked variant a point below torch fp32
        row["miou"] = row["miou_reference"] - 0.01
    fileio.write_json(run.parity, parity)
    result = invoke("deploy", run.path)
    assert result.exit_code == 1, result.output
    assert "nothing deployed" in result.output and "over the budget: mIoU 1.00 pt" in result.output
    assert not (run.path / "deploy").exists()
    assert invoke("deploy", run.path, "--max-miou-drop", "1.5").exit_code == 0


def image_folder(root: Path) -> Path:
    """Images of several sizes and formats, one in a sub-folder."""
    rng = np.random.default_rng(0)
    for i, (height, width, suffix) in enumerate([(50, 70, ".jpg"), (64, 64, ".png"), (97, 41, ".png"),
                                                 (33, 120, ".jpg"), (80, 80, ".bmp")]):
        path = root / ("sub" if i == 2 else "") / f"image{i}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return root


@pytest.mark.slow
def test_the_bundle_predicts_without_torch_the_masks_segdeploy_predict_writes(measured_run, tmp_path):
    import offline_venv

    manifest = json.loads(measured_run.deploy_manifest.read_text())
    try:
        python = offline_venv.build(tmp_path / "venv", ["numpy", "pillow", manifest["runtime"]])
    except offline_venv.OfflineVenvError as exc:
        pytest.skip(f"cannot build a virtual environment offline here: {exc}")
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    images = image_folder(tmp_path / "images")
    bundle_copy = shutil.copytree(measured_run.deploy_dir, tmp_path / "bundle")  # runs wherever it is copied
    ran = subprocess.run([str(python), str(bundle_copy / "predict.py"), str(images), "--output", str(tmp_path / "a"),
                          "--batch-size", "2", "--threads", "2"], capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    result = invoke("predict", measured_run.path, images, "--output", tmp_path / "b", "--batch-size", "2",
                    "--threads", "2")
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert written == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert len(written) == 5 and Path("sub/image2.png") in written
    for name in written:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.parametrize("flags, message", [(["--objective", "memory"], "--objective must be latency or throughput"),
                                            (["--max-miou-drop", "-1"], "deploy.max_miou_drop must be in [0, 100]"),
                                            (["--min-agreement", "2"], "deploy.min_agreement must be in [0, 1]")])
def test_bad_settings_are_usage_errors_before_anything_is_read(trained_run, tmp_path, flags, message):
    run = clone_run(trained_run, tmp_path / "run")
    result = invoke("deploy", run.path, *flags)
    assert result.exit_code == 2 and message in result.output, result.output
