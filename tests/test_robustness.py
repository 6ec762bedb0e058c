"""Robustness, round two (issue 15): what a new user broke, each as a class of failure, through the CLI.

Classes: one validation layer for every numeric and path setting; files that change together are
written as one unit (an interrupt leaves the old set or the new one); every reader checks what it reads
against what was recorded; hints are commands that work as printed (the tests run them).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import signal
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image
from segdeploy.core import fileio
from segdeploy.core.config import Config
from segdeploy.core.validate import RULES
from segdeploy.runtime.variants import parse_variant, unavailable_reason
from test_errors import assert_one_line_error, invoke, replace_file, run_copy, snapshot, temp_files  # noqa: F401

TINY = ["--size", 32, "--max-images", 4, "--epochs", 1, "--batch-size", 4, "--threads", 2, "--device", "cpu"]


def hint_command(output: str) -> list[str]:
    """The command in backticks of the last `hint:`/`interrupted:`/error line, as words (without `segdeploy`)."""
    found = [part for line in output.splitlines() for part in line.split("`")[1::2] if part.startswith("segdeploy ")]
    assert found, output
    words = shlex.split(found[-1])
    assert words[0] == "segdeploy"
    return words[1:]


def run_hint(result) -> object:
    """Run the command a message suggests, exactly as printed; it must succeed."""
    again = invoke(*hint_command(result.stderr + result.stdout))
    assert again.exit_code == 0, again.output
    return again


# --------------------------------------------------------------------------- one validation layer


def _leaf_types(hint) -> set:
    args = typing.get_args(hint)
    return set().union(*(_leaf_types(a) for a in args)) if args else {hint}


def test_every_numeric_and_path_setting_has_a_rule():
    """New settings get a range (or path kind) in core/validate.py, or this fails."""
    missing = []
    for section in dataclasses.fields(Config):
        if section.name == "name":
            continue
        hints = typing.get_type_hints(section.default_factory)
        for field in dataclasses.fields(section.default_factory()):
            numeric = bool(_leaf_types(hints[field.name]) & {int, float}) and hints[field.name] is not bool
            path_like = any(word in field.name for word in ("root", "weights", "plugins"))
            if (numeric or path_like) and f"{section.name}.{field.name}" not in RULES:
                missing.append(f"{section.name}.{field.name}")
    assert not missing, f"settings without a rule in segdeploy/core/validate.py: {missing}"


@pytest.mark.parametrize("args, message", [
    (["eval", "{run}", "--batch-size", 0], "eval.batch_size must be at least 1, got 0"),
    (["parity", "{run}", "--batch-size", 0], "parity.batch_size must be at least 1, got 0"),
    (["parity", "{run}", "--max-images", 0], "parity.max_images must be at least 1, got 0"),  # was: all images
    (["eval", "{run}", "--top-k", -1], "eval.top_k must be at least 0, got -1"),
    (["eval", "{run}", "--threads", 0], "eval.threads must be at least 1, got 0"),
    (["parity", "{run}", "--min-agreement", 2.0], "parity.min_agreement must be in [0, 1], got 2.0"),
    (["parity", "{run}", "--atol", "nan"], "parity.atol must be a finite number, got nan"),
    (["bench", "{run}", "--warmup-window", 0], "bench.warmup_window must be at least 1, got 0"),
    (["bench", "{run}", "--cell-timeout", -1], "bench.cell_timeout_s must be a positive number, got -1.0"),
    (["bench", "{run}", "--batch-sizes", ""], "batch sizes must be integers >= 1, got ''"),  # was: the defaults
    (["bench", "{run}", "--batch-sizes", "0,2"], "batch sizes must be integers >= 1"),
    (["export", "{run}", "--opset", 3], "export.opset must be at least 7, got 3"),
    (["export", "{run}", "--opset", 99], "export.opset 99 is above the highest opset"),
    (["export", "{run}", "--max-batch", 0], "engine.max_batch must be at least 1, got 0"),
    (["export", "{run}", "--min-batch", 4, "--max-batch", 2], "--min-batch 4"),  # was: ignored without --trt
    (["export", "{run}", "--opt-level", 9], "engine.optimization_level must be in [0, 5], got 9"),
    (["export", "{run}", "--calib-images", 0, "--precision", "int8"], "export.calib_images must be at least 1"),
])
def test_out_of_range_values_are_refused_by_every_command(run_copy, args, message):
    before = snapshot(run_copy)
    result = invoke(*[run_copy if a == "{run}" else a for a in args])
    assert_one_line_error(result, message)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("flag, value, message", [
    ("--seed", -1, "train.seed must be in [0, 4294967295], got -1"),  # was: numpy's ValueError traceback
    ("--weight-decay", "nan", "train.weight_decay must be a finite number, got nan"),  # was: AdamW traceback
    ("--lr", "inf", "train.lr must be a finite number, got inf"),
    ("--feature-cache-mb", -5, "train.feature_cache_mb must be at least 0, got -5"),  # was: accepted
    ("--output-stride", 7, "model.output_stride must be 8 or 16, got 7"),  # was: silently ignored for unet
    ("--num-classes", 1, "data.num_classes must be in [2, 255] (class ids are stored in uint8 masks, 255 = void; at least 2 classes), got 1"),
    ("--size", -64, "data.size must be at least 1, got -64"),
])
def test_out_of_range_training_values(tmp_path, flag, value, message):
    result = invoke("train", *TINY, flag, value, "--output", tmp_path / "out")
    assert_one_line_error(result, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("toml, message", [
    ("[train]\nseed = -3\n", "train.seed must be in [0, 4294967295], got -3"),
    ("[data]\nval_fraction = 1.5\n", "data.val_fraction must be in (0, 1), got 1.5"),
    ("[bench]\nbatch_sizes = \"many\"\n", "bench.batch_sizes must be numbers at least 1 or 'auto', got 'many'"),
    ("[parity]\nmax_miou_delta = -0.1\n", "parity.max_miou_delta must be in [0, 1], got -0.1"),
])
def test_the_same_rules_apply_to_toml(tmp_path, toml, message):
    config = tmp_path / "c.toml"
    config.write_text(toml)
    assert_one_line_error(invoke("train", "--config", config, "--output", tmp_path / "out"), config, message)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def blockers(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path / "a-folder", tmp_path / "a-file"


@pytest.mark.parametrize("args, message", [
    (["train", "--config", "{folder}"], "config file {folder} is a folder, not a file"),
    (["train", *TINY, "--output", "{file}"], "--output {file} is a file, not a folder"),
    (["train", *TINY, "--dataset", "folder", "--data-root", "{file}"], "data root {file} is a file, not a folder"),
    (["train", *TINY, "--encoder-weights", "{folder}"], "encoder weights {folder} is a folder, not a file"),
    (["train", "--resume", "{file}"], "{file} is a file, not a run directory"),
    (["eval", "{file}"], "{file} is a file, not a run directory"),
    (["study", "{folder}"], "study file {folder} is a folder, not a file"),
    (["report", "{run}", "--output", "{file}"], "--output {file} is a file, not a folder"),
    (["bench", "{run}", "--plugin", "{folder}"], "backend plugin {folder} is a folder, not a file"),
    (["eval", "{run}", "--dataset", "folder", "--data-root", "{file}"], "data root {file} is a file, not a folder"),
])
def test_paths_of_the_wrong_kind_are_named(run_copy, blockers, args, message):
    """Before: 'not found' for a path that exists, or an OSError ('Not a directory')."""
    folder, file = blockers
    fill = {"{folder}": folder, "{file}": file, "{run}": run_copy}
    before = snapshot(run_copy)
    result = invoke(*[fill.get(a, a) if isinstance(a, str) else a for a in args])
    assert_one_line_error(result, message.format(folder=folder, file=file))
    assert snapshot(run_copy) == before


def test_missing_encoder_weights_refused_before_a_run_directory_exists(tmp_path):
    result = invoke("train", *TINY, "--encoder-weights", tmp_path / "nope.pt", "--output", tmp_path / "out")
    assert_one_line_error(result, "encoder weights not found", tmp_path / "nope.pt")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- units: the old set or the new


def test_interrupted_export_keeps_graph_and_sidecar_together(run_copy, monkeypatch):
    """Repro 1: Ctrl-C during `export --precision fp32,fp16` (after the new FP32 graph was written and
    simplified) leaves the earlier graph and sidecar; the hint's command then exports both."""
    import segdeploy.export.precision as precision

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    before = snapshot(run_copy)
    monkeypatch.setattr(precision, "convert_fp16", interrupted)
    result = invoke("export", run_copy, "--precision", "fp32,fp16", "--no-simplify")
    assert result.exit_code == 130, result.output
    assert snapshot(run_copy) == before and not temp_files(run_copy)
    monkeypatch.undo()
    assert hint_command(result.stderr) == ["export", str(run_copy), "--precision", "fp32,fp16", "--no-simplify"]
    run_hint(result)
    for name in ("model", "model.fp16"):
        sidecar = json.loads((run_copy / "export" / f"{name}.json").read_text())
        assert sidecar["sha256"] == fileio.sha256_file(run_copy / "export" / f"{name}.onnx")
        assert sidecar["simplify"]["simplified"] is False


def test_a_commit_killed_halfway_is_finished_by_the_next_reader(run_copy, monkeypatch):
    """A process killed between renaming the new graph and its sidecar into place leaves a journal; the
    next command that opens the run completes the unit, so graph and sidecar agree again."""
    import segdeploy.core.unit as unit

    real_apply = unit._apply
    done = []

    def killed_after_one_rename(root, journal):
        done.append(journal["renames"][0])
        real_apply(root, {"renames": journal["renames"][:1], "removals": []})
        raise SystemExit("killed")  # stands in for SIGKILL: nothing after the first rename runs

    monkeypatch.setattr(unit, "_apply", killed_after_one_rename)
    assert isinstance(invoke("export", run_copy, "--no-simplify").exception, SystemExit)
    monkeypatch.undo()
    assert len(list(run_copy.glob(".unit-*.journal"))) == 1 and len(done) == 1
    sidecar = json.loads((run_copy / "export" / "model.json").read_text())
    assert sidecar["sha256"] != fileio.sha256_file(run_copy / "export" / "model.onnx")  # the mix a kill leaves
    result = invoke("eval", run_copy, "--backends", "onnxruntime", "--max-images", 2, "--no-figures")
    assert result.exit_code == 0, result.output
    assert not list(run_copy.glob(".unit-*.journal")) and not temp_files(run_copy)
    sidecar = json.loads((run_copy / "export" / "model.json").read_text())
    assert sidecar["sha256"] == fileio.sha256_file(run_copy / "export" / "model.onnx")


def test_eval_figures_and_metrics_change_together(run_copy, monkeypatch):
    """Ctrl-C while the figures are drawn keeps the earlier metrics.json and figures; a rerun without
    figures removes the earlier ones instead of leaving figures of another evaluation beside it."""
    import segdeploy.evaluation.figures as figures

    assert invoke("eval", run_copy, "--max-images", 3).exit_code == 0
    before = snapshot(run_copy)
    real = figures.plot_mosaic

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(figures, "plot_mosaic", interrupted)
    assert invoke("eval", run_copy, "--max-images", 2).exit_code == 130
    assert snapshot(run_copy) == before and not temp_files(run_copy)
    monkeypatch.undo()
    assert invoke("eval", run_copy, "--max-images", 2, "--no-figures").exit_code == 0
    folder = run_copy / "eval" / "torch-fp32-synthetic-val"
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json"]
    assert json.loads((folder / "metrics.json").read_text())["images"] == 2


# --------------------------------------------------------------------------- readers check what was recorded


def _other_runs_graph(run: Path, classes: int) -> tuple[bytes, dict]:
    """Another run's exported graph and sidecar: a 3-class U-Net at the same size."""
    from segdeploy.export.onnx import export_onnx
    from segdeploy.models.registry import build_model

    cfg = Config()
    net = build_model(cfg.model, classes, 64).eval()
    path = run.parent / "other.onnx"
    export_onnx(net, path, 64)
    sidecar = json.loads((run / "export" / "model.json").read_text())
    sidecar.update(class_names=[f"c{i}" for i in range(classes)], sha256=fileio.sha256_file(path))
    sidecar["output"]["shape"][1] = classes
    sidecar.pop("checkpoint_sha256")
    return path.read_bytes(), sidecar


def test_graph_of_another_run_is_refused(run_copy):
    """Repro 2: another run's 3-class graph copied into this 4-class run. With its sidecar: parity names the
    class counts (it crashed with a broadcast ValueError); without: eval names the hash (it exited 0)."""
    graph, sidecar = _other_runs_graph(run_copy, 3)
    onnx_path, sidecar_path = run_copy / "export" / "model.onnx", run_copy / "export" / "model.json"
    replace_file(onnx_path, graph)
    replace_file(sidecar_path, json.dumps(sidecar).encode())
    before = snapshot(run_copy)
    result = invoke("parity", run_copy, "--max-images", 2)
    assert_one_line_error(result, onnx_path, "predicts 3 classes, the run 4")
    assert snapshot(run_copy) == before
    replace_file(sidecar_path, json.dumps({**sidecar, "class_names": ["a", "b", "c", "d"],
                                           "sha256": "0" * 64}).encode())
    result = invoke("eval", run_copy, "--backends", "onnxruntime")
    assert_one_line_error(result, onnx_path, "its sha256 is", "model.json records 000000000000")
    assert not (run_copy / "eval").exists()
    run_hint(result)  # `segdeploy export RUN --precision fp32`
    assert invoke("eval", run_copy, "--backends", "onnxruntime", "--max-images", 2, "--no-figures").exit_code == 0


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.openvino)])
def test_edited_sidecar_hash_is_noticed(run_copy, backend):
    if unavailable_reason(parse_variant(backend), "cpu"):
        pytest.skip(unavailable_reason(parse_variant(backend), "cpu"))
    sidecar_path = run_copy / "export" / "model.json"
    sidecar = json.loads(sidecar_path.read_text())
    replace_file(sidecar_path, json.dumps({**sidecar, "sha256": "f" * 64}).encode())
    result = invoke("bench", run_copy, "--backends", backend, "--batch-sizes", 1)
    assert_one_line_error(result, "model.onnx is not the graph model.json describes", "ffffffffffff")
    assert not (run_copy / "bench.json").exists()


def _train_again(run: Path) -> None:
    """best.pt replaced by other weights of the same model, as `train --resume` of more epochs does."""
    best = run / "checkpoints" / "best.pt"
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    ckpt["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    best.unlink()
    torch.save(ckpt, best)


def test_graph_exported_from_an_older_checkpoint_is_refused(run_copy):
    """Trained again (best.pt changed) but not exported again: the graph is another model's."""
    _train_again(run_copy)
    result = invoke("eval", run_copy, "--backends", "onnxruntime")
    assert_one_line_error(result, "exported from another checkpoints/best.pt")


def test_metrics_of_an_older_checkpoint_are_not_reported(run_copy, tmp_path):
    """metrics.json computed before the run was trained again is not shown as the run's result."""
    assert invoke("eval", run_copy, "--no-figures").exit_code == 0
    _train_again(run_copy)
    result = invoke("report", run_copy, "--output", tmp_path / "report")
    assert_one_line_error(result, run_copy / "metrics.json", "another checkpoints/best.pt")
    assert not (tmp_path / "report").exists()
    run_hint(result)  # `segdeploy eval RUN`
    assert invoke("report", run_copy, "--output", tmp_path / "report").exit_code == 0


# --------------------------------------------------------------------------- data


def _folder(root: Path, masks: list[Image.Image], images: list[np.ndarray] | None = None) -> Path:
    rng = np.random.default_rng(0)
    for i, mask in enumerate(masks):
        image = images[i] if images is not None else rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        write_image(root / "images" / f"i{i}.png", image)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        mask.save(root / "masks" / f"i{i}.png")
    return root


def _palette_mask(indices: np.ndarray) -> Image.Image:
    mask = Image.fromarray(indices.astype(np.uint8), "P")
    mask.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 254)  # index 1 dark red, as VOC-style tools write it
    return mask


def test_palette_masks_and_16_bit_images(tmp_path):
    """Repros 3 and 4: palette masks with indices 0/1 were read as all background (dark red -> grey 38 ->
    below 127); 16-bit grey images were clipped to near-white. Through train and eval: the truth has the
    foreground pixels the masks hold, and the images their own grey levels."""
    from segdeploy.core.config import DataConfig
    from segdeploy.data.registry import build_dataset

    indices = np.zeros((32, 32), np.uint8)
    indices[8:24, 8:16] = 1
    grey16 = (np.arange(32 * 32).reshape(32, 32) * 40).astype(np.uint16)  # 0 .. 40920
    images = [grey16] * 8
    root = _folder(tmp_path / "data", [_palette_mask(indices)] * 8, images)
    out = tmp_path / "run"
    assert invoke("train", *TINY, "--dataset", "folder", "--data-root", root, "--output", out).exit_code == 0
    result = invoke("eval", out, "--no-figures")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    truth_foreground = sum(metrics["confusion_matrix"][1])
    assert truth_foreground == metrics["images"] * int(indices.sum())
    loaded = build_dataset(DataConfig(dataset="folder", root=str(root), size=32), "train")
    assert np.array_equal(loaded.images[0][..., 0], ((grey16.astype(np.int64) * 255 + 32767) // 65535))


def test_float_images_are_refused(tmp_path):
    root = _folder(tmp_path / "data", [Image.fromarray(np.zeros((32, 32), np.uint8))] * 4)
    (root / "images" / "i2.png").unlink()
    Image.fromarray(np.ones((32, 32), np.float32)).save(root / "images" / "i2.tif")
    result = invoke("train", *TINY, "--dataset", "folder", "--data-root", root, "--output", tmp_path / "out")
    assert_one_line_error(result, root / "images" / "i2.tif", "floating-point image")


@pytest.mark.parametrize("classes", [2, 3])
def test_rgb_colour_masks_are_named_as_such(tmp_path, classes):
    """Repro 12: RGB colour-coded masks failed with 'class id 76' (a grey level), or for binary data were
    silently all background (red -> 76 < 127)."""
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[4:20, 4:20] = (128, 0, 0)
    colour[20:28, 20:28] = (0, 128, 0)
    root = _folder(tmp_path / "data", [Image.fromarray(colour)] * 4)
    result = invoke("train", *TINY, "--dataset", "folder", "--data-root", root, "--num-classes", classes,
                    "--output", tmp_path / "out")
    assert_one_line_error(result, "is an RGB colour image", "(128, 0, 0)", "single-channel")
    assert not (tmp_path / "out").exists()


def test_all_void_batches_give_zero_loss_and_are_counted(tmp_path):
    """Repro 5: a batch without a labelled pixel made the loss NaN (exit 3, a hint about the learning rate)."""
    void = Image.fromarray(np.full((32, 32), 255, np.uint8))
    labelled = np.zeros((32, 32), np.uint8)
    labelled[4:12, 4:12] = 2
    root = tmp_path / "data"
    _folder(root / "train", [void] * 4)
    _folder(root / "val", [Image.fromarray(labelled)] * 2)
    out = tmp_path / "run"
    result = invoke("train", *TINY, "--epochs", 2, "--dataset", "folder", "--data-root", root, "--num-classes", 3,
                    "--output", out)
    assert result.exit_code == 0, result.output
    assert "had no labelled pixel" in result.output
    rows = [line.split(",") for line in (out / "history.csv").read_text().splitlines()]
    header = rows[0]
    for row in rows[1:]:
        assert float(row[header.index("train_loss")]) == 0.0 and row[header.index("empty_batches")] == "1"


# --------------------------------------------------------------------------- results are replaced only by results


@pytest.mark.parametrize("args", [
    ["parity", "{run}", "--backends", ""], ["bench", "{run}", "--backends", ""],
    ["parity", "{run}", "--backends", " , "], ["parity", "{run}", "--precision", ""],
    ["parity", "{run}", "--backends", "tensorrt"], ["bench", "{run}", "--backends", "tensorrt", "--batch-sizes", 1],
])
def test_empty_or_unrunnable_selection_keeps_the_results(run_copy, args):
    """Repro 6: an empty selection, or one where nothing can run here, never replaces parity.json/bench.json."""
    for name in ("parity.json", "bench.json"):
        (run_copy / name).write_text('{"results": [{"status": "ok", "note": "a good earlier result"}]}\n')
    before = snapshot(run_copy)
    result = invoke(*[run_copy if a == "{run}" else a for a in args])
    message = assert_one_line_error(result)
    assert ("nothing could be measured" in message and "left as it was" in message) or "no " in message
    assert snapshot(run_copy) == before


# --------------------------------------------------------------------------- locks


def _hold_lock(folder: Path) -> subprocess.Popen:
    code = ("import sys, time; from segdeploy.core.lock import run_lock\n"
            f"with run_lock({str(folder)!r}, 'train --overwrite'):\n    print('locked', flush=True); time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_run_being_written_is_locked_and_a_dead_holders_lock_taken_over(run_copy):
    """Repro 8: two `train --overwrite` into one folder raced (FileNotFoundError: last.pt). The second
    writer is now refused naming the first; a lock left by a killed process is taken over with a message."""
    holder = _hold_lock(run_copy)
    try:
        before = snapshot(run_copy)
        for args in (["train", *TINY, "--overwrite", "--output", run_copy], ["export", run_copy]):
            result = invoke(*args)
            assert_one_line_error(result, run_copy, "is being written by pid", str(holder.pid), "train --overwrite")
        assert snapshot(run_copy) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run_copy / ".segdeploy.lock").is_file()  # what a killed writer leaves
    result = invoke("eval", run_copy, "--max-images", 2, "--no-figures")
    assert result.exit_code == 0, result.output
    assert f"took over the lock of {run_copy} from pid {holder.pid}" in " ".join(result.output.split())
    assert not (run_copy / ".segdeploy.lock").exists()


# --------------------------------------------------------------------------- out of memory


def test_out_of_memory_in_training_is_one_line(tmp_path):
    """Repro 9, a real allocation failure: 262144 px images do not fit in any machine's memory."""
    result = invoke("train", *TINY[2:], "--size", 2**18, "--output", tmp_path / "out")  # 824 GB of images
    message = assert_one_line_error(result, "out of memory training unet/resnet18 at 262144px with batch size 4")
    assert "hint: lower --batch-size (now 4) or --size (now 262144)" in result.stderr, message
    assert not (tmp_path / "out").exists()


def test_out_of_memory_in_eval_is_one_line(run_copy, monkeypatch):
    """An allocator failure of a backend (simulated: no GPU here) names the setting to lower."""
    import segdeploy.runtime.torch_runner as torch_runner

    def oom(self, prepared):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(torch_runner.TorchRunner, "run", oom)
    result = invoke("eval", run_copy)
    assert_one_line_error(result, "out of memory in `segdeploy eval`", "Tried to allocate 20.00 GiB")
    assert "hint: lower --batch-size" in result.stderr


# --------------------------------------------------------------------------- failed attempts, hints


def test_training_that_failed_before_its_first_epoch_is_replaced(tmp_path):
    """Repro 10: a first epoch that diverged left config.toml, and the corrected command was refused."""
    out = tmp_path / "run"
    failed = invoke("train", *TINY, "--lr", 1e12, "--optimizer", "adam", "--output", out)
    assert failed.exit_code == 3 and (out / "config.toml").is_file()
    result = invoke("train", *TINY, "--output", out)
    assert result.exit_code == 0, result.output
    assert "replacing" in result.output and "wrote no checkpoint" in " ".join(result.output.split())
    assert (out / "checkpoints" / "best.pt").is_file()
    refused = invoke("train", *TINY, "--output", out)  # a trained run still needs --overwrite
    assert_one_line_error(refused, "already exists", "--overwrite")


def test_missing_checkpoint_hint_runs_as_printed(tmp_path):
    """Repro 11: 'run `segdeploy train RUN` first' was not a command the CLI accepts."""
    out = tmp_path / "run"
    assert invoke("train", *TINY, "--output", out).exit_code == 0
    (out / "checkpoints" / "best.pt").unlink()
    result = invoke("export", out)
    assert_one_line_error(result, out / "checkpoints" / "best.pt", "segdeploy train --config")
    run_hint(result)
    assert invoke("export", out, "--exporter", "torchscript").exit_code == 0  # the hint's subject, not the exporter's


def test_interrupted_training_hint_runs_as_printed(tmp_path, monkeypatch):
    """Ctrl-C in train suggests `train --resume RUN` (the hint every command used to print); run it."""
    import segdeploy.training.loop as loop

    real = loop.make_loss

    def interrupting(cfg):
        loss = real(cfg)

        def step(logits, masks):
            if torch.is_grad_enabled():
                raise KeyboardInterrupt
            return loss(logits, masks)
        return step

    monkeypatch.setattr(loop, "make_loss", interrupting)
    out = tmp_path / "run"
    result = invoke("train", *TINY, "--output", out)
    assert result.exit_code == 130
    monkeypatch.undo()
    assert hint_command(result.stderr) == ["train", "--resume", str(out)]
    run_hint(result)
    assert (out / "checkpoints" / "best.pt").is_file()


def test_interrupted_bench_hint_reruns_the_same_command(run_copy, monkeypatch):
    """Ctrl-C in bench used to suggest `train --resume`; now it is the bench command itself, which runs."""
    import segdeploy.bench.sweep as sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    args = ["bench", run_copy, "--backends", "torch", "--batch-sizes", 1, "--iters", 2, "--warmup", 0,
            "--max-warmup", 1, "--in-process", "--no-accuracy", "--threads", 2]
    monkeypatch.setattr(sweep, "model_flops", interrupted)
    result = invoke(*args)
    assert result.exit_code == 130 and "train --resume" not in result.stderr
    monkeypatch.undo()
    hint = hint_command(result.stderr)
    assert hint[:2] == ["bench", str(run_copy)] and sorted(hint) == sorted(str(a) for a in args)
    run_hint(result)
    assert (run_copy / "bench.json").is_file() and (run_copy / "bench.md").is_file()


def test_missing_precision_graph_hint_runs_as_printed(run_copy):
    result = invoke("parity", run_copy, "--precision", "fp16", "--max-images", 2)
    assert_one_line_error(result, run_copy / "export" / "model.fp16.onnx", "segdeploy export --precision fp16")
    run_hint(result)
    assert invoke("parity", run_copy, "--precision", "fp16", "--max-images", 2).exit_code in (0, 1)
