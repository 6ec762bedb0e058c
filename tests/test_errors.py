"""Every bad input is one line on stderr with a fixed exit code, names what is wrong, and loses nothing.

Each case goes through the CLI (Typer's CliRunner on segdeploy.cli.app) and checks: the exit code, that
the message names the offending path or value, that no traceback is printed, and that files written
before the failure are unchanged (and no temporary file is left behind).
"""

from __future__ import annotations

import builtins
import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import reexport_cheaply, make_folder_dataset, tiny_config, write_image
from segdeploy.core import fileio
from segdeploy.cli import app
from segdeploy.core.config import config_to_toml
from segdeploy.core.errors import EXIT_NONFINITE, EXIT_USAGE, StageMissingError

RUNNER = CliRunner()


def invoke(*args):
    return RUNNER.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *names, code: int = EXIT_USAGE) -> str:
    """The exit code, one `error:` line (plus at most a `hint:` line), naming every item of `names`."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), result.stderr
    assert len(lines) <= 2 and all(line.startswith(("error: ", "hint: ")) for line in lines), result.stderr
    for name in names:
        assert str(name) in lines[0], f"{name!s} not in {lines[0]!r}"
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): fileio.sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if fileio.is_temp_file(p)]


def replace_file(path: Path, data: bytes) -> None:
    """New content in a new inode: run copies are hard links to the shared session run."""
    path.unlink()
    path.write_bytes(data)


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of the trained and exported run (hard links: files are replaced, never edited); its
    re-exports use the torchscript exporter (conftest.reexport_cheaply)."""
    dst = tmp_path / "run"
    shutil.copytree(trained_run.path, dst, copy_function=os.link)
    config = dst / "config.toml"
    text = config.read_text()
    config.unlink()  # a hard link to the shared run's file: replaced, not written through
    config.write_text(reexport_cheaply(text))
    return dst


def train_args(root: Path, out: Path, *extra) -> list:
    return ["train", "--dataset", "folder", "--data-root", root, "--size", 64, "--epochs", 1,
            "--device", "cpu", "--output", out, *extra]


# --------------------------------------------------------------------------- data


def test_missing_data_root(tmp_path):
    out = tmp_path / "out"
    result = invoke(*train_args(tmp_path / "nowhere", out))
    assert_one_line_error(result, "data root not found", tmp_path / "nowhere")
    assert not out.exists()


def test_empty_data_root(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke(*train_args(tmp_path / "empty", tmp_path / "out"))
    assert_one_line_error(result, "data root is empty", tmp_path / "empty")
    assert not (tmp_path / "out").exists()


def test_image_without_mask(tmp_path):
    root = make_folder_dataset(tmp_path / "data")
    (root / "masks" / "img002.png").unlink()
    result = invoke(*train_args(root, tmp_path / "out"))
    assert_one_line_error(result, root / "images" / "img002.png", "has no mask")


def test_mask_without_image(tmp_path):
    root = make_folder_dataset(tmp_path / "data")
    (root / "images" / "img004.png").unlink()
    result = invoke(*train_args(root, tmp_path / "out"))
    assert_one_line_error(result, root / "masks" / "img004.png", "has no image")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image(tmp_path, damage):
    root = make_folder_dataset(tmp_path / "data", image_ext=".jpg", count=4)
    victim = root / "images" / "img001.jpg"
    data = victim.read_bytes()
    victim.write_bytes(b"this is not an image" * 20 if damage == "garbage" else data[: len(data) // 2])
    result = invoke(*train_args(root, tmp_path / "out"))
    assert_one_line_error(result, "cannot read image", victim)
    assert not (tmp_path / "out").exists()


def test_mask_of_another_size(tmp_path):
    root = make_folder_dataset(tmp_path / "data", size=48)
    write_image(root / "masks" / "img003.png", np.zeros((40, 40), np.uint8))
    result = invoke(*train_args(root, tmp_path / "out"))
    assert_one_line_error(result, root / "masks" / "img003.png", "40x40", "56x48")


@pytest.mark.parametrize("bad_id", [7, 300])
def test_mask_class_id_out_of_range(tmp_path, bad_id):
    """300 in a 16-bit mask must not wrap around to 44 on the way to uint8."""
    root = make_folder_dataset(tmp_path / "data", num_classes=3)
    mask = np.zeros((48, 56), np.uint16 if bad_id > 255 else np.uint8)
    mask[5:9, 5:9] = bad_id
    mask[20:30, 20:30] = 255  # void is allowed
    (root / "masks" / "img005.png").unlink()
    from PIL import Image
    Image.fromarray(mask).save(root / "masks" / "img005.png")
    result = invoke(*train_args(root, tmp_path / "out", "--num-classes", 3))
    assert_one_line_error(result, root / "masks" / "img005.png", f"class id {bad_id}", "3 classes")


def test_void_255_is_not_out_of_range(tmp_path):
    from segdeploy.data.registry import build_dataset

    root = make_folder_dataset(tmp_path / "data", num_classes=3)
    mask = np.full((48, 56), 255, np.uint8)
    mask[:10] = 2
    write_image(root / "masks" / "img000.png", mask)
    cfg = tiny_config(data={"dataset": "folder", "root": str(root), "num_classes": 3, "max_images": None})
    datasets = [build_dataset(cfg.data, split) for split in ("train", "val")]
    values = np.unique(np.concatenate([d.masks.ravel() for d in datasets]))
    assert set(values.tolist()) <= {0, 1, 2, 255} and 255 in values


def _voc_root(root: Path, train_ids: list[str], val_ids: list[str]) -> Path:
    rng = np.random.default_rng(0)
    for image_id in train_ids + val_ids:
        write_image(root / "JPEGImages" / f"{image_id}.jpg", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
        write_image(root / "SegmentationClass" / f"{image_id}.png", np.zeros((40, 48), np.uint8))
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in train_ids))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in val_ids))
    return root


@pytest.mark.parametrize("layout", ["folder-empty-val", "folder-no-val", "one-image", "voc-empty-val"])
def test_empty_split(tmp_path, layout):
    data = tmp_path / "data"
    dataset = "folder"
    if layout in ("folder-empty-val", "folder-no-val"):
        make_folder_dataset(data / "train", count=3)
        if layout == "folder-empty-val":
            (data / "val" / "images").mkdir(parents=True)
            (data / "val" / "masks").mkdir(parents=True)
            expected = ("no images in", data / "val" / "images")
        else:
            expected = ("no val split", data / "val" / "images")
    elif layout == "one-image":
        make_folder_dataset(data, count=1)
        expected = ("has no train images", data)
    else:
        _voc_root(data, ["a", "b"], [])
        dataset = "voc"
        expected = ("has no val images", data)
    args = train_args(data, tmp_path / "out")
    args[args.index("folder")] = dataset
    assert_one_line_error(invoke(*args), *expected)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- names, sizes, config


@pytest.mark.parametrize("flag, value, known", [
    ("--model", "unet3000", "deeplabv3plus"),
    ("--encoder", "resnet7", "resnet101"),
    ("--dataset", "imagenet", "synthetic"),
    ("--optimizer", "sgdx", "adamw"),
    ("--loss", "hinge", "dice-ce"),
    ("--device", "tpu", "cuda"),
])
def test_unknown_name_in_train(tmp_path, flag, value, known):
    result = invoke("train", flag, value, "--size", 64, "--output", tmp_path / "out")
    assert_one_line_error(result, repr(value), known)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, value, known", [
    (["parity", "{run}", "--backends", "tensorflow"], "tensorflow", "onnxruntime"),
    (["bench", "{run}", "--backends", "coreml", "--batch-sizes", 1], "coreml", "torch"),
    (["eval", "{run}", "--backends", "tflite"], "tflite", "onnxruntime"),
    (["bench", "{run}", "--backends", "onnxruntime", "--precision", "fp64"], "fp64", "int8"),
    (["eval", "{run}", "--backends", "onnxruntime", "--precision", "bf16"], "bf16", "fp16"),
])
def test_unknown_backend_or_precision(run_copy, args, value, known):
    before = snapshot(run_copy)
    result = invoke(*[run_copy if a == "{run}" else a for a in args])
    assert_one_line_error(result, repr(value), known)
    after = snapshot(run_copy)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) == set(before)


@pytest.mark.parametrize("model, size, multiple", [("unet", 100, 32), ("deeplabv3", 72, 16)])
def test_input_size_not_divisible(tmp_path, model, size, multiple):
    result = invoke("train", "--model", model, "--size", size, "--output", tmp_path / "out")
    assert_one_line_error(result, f"input size {size}", f"multiple of {multiple}")


@pytest.mark.parametrize("flag, value, expected", [
    ("--batch-size", 0, "train.batch_size must be at least 1, got 0"),
    ("--epochs", 0, "train.epochs must be at least 1, got 0"),
    ("--lr", -1.0, "train.lr must be a positive number, got -1.0"),
    ("--max-images", 0, "data.max_images must be at least 1, got 0"),
    ("--ema-decay", 1.0, "train.ema_decay must be in [0, 1), got 1.0"),
])
def test_value_out_of_range(tmp_path, flag, value, expected):
    result = invoke("train", flag, value, "--size", 64, "--output", tmp_path / "out")
    assert_one_line_error(result, expected)


@pytest.mark.parametrize("toml, expected", [
    ("[train]\nepochz = 3\n", "unknown config key train.epochz"),
    ("[trian]\nepochs = 3\n", "unknown config section or key 'trian'"),
    ("[train]\nepochs = \"ten\"\n", "train.epochs: expected int, got str 'ten'"),
    ("[data]\naugment = 1\n", "data.augment: expected str"),
    ("[train\nepochs = 3\n", "not valid TOML"),
])
def test_bad_config_file(tmp_path, toml, expected):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    result = invoke("train", "--config", config, "--output", tmp_path / "out")
    assert_one_line_error(result, config, expected)
    assert not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path):
    result = invoke("train", "--config", tmp_path / "nope.toml", "--output", tmp_path / "out")
    assert_one_line_error(result, "config file not found", tmp_path / "nope.toml")


# --------------------------------------------------------------------------- checkpoints and ONNX files


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_checkpoint(run_copy, damage):
    ckpt = run_copy / "checkpoints" / "best.pt"
    data = ckpt.read_bytes()
    replace_file(ckpt, {"garbage": b"\x80\x02not a checkpoint" * 50, "truncated": data[: len(data) // 3],
                        "empty": b""}[damage])
    before = snapshot(run_copy)
    result = invoke("eval", run_copy)
    assert_one_line_error(result, ckpt, "corrupt or truncated")
    assert snapshot(run_copy) == before  # no metrics.json, nothing else touched


def _foreign_checkpoint(run_copy: Path, model: str, num_classes: int) -> Path:
    """The best checkpoint of another run: another model or class count, its own config inside."""
    from segdeploy.core.config import config_to_dict
    from segdeploy.models.registry import build_model

    cfg = tiny_config(model={"name": model, "num_classes": num_classes})
    cfg.data.num_classes = num_classes
    net = build_model(cfg.model, num_classes, cfg.data.size)
    path = run_copy / "checkpoints" / "best.pt"
    path.unlink()
    torch.save({"model": net.state_dict(), "config": config_to_dict(cfg), "epoch": 1,
                "class_names": [f"c{i}" for i in range(num_classes)]}, path)
    return path


@pytest.mark.parametrize("model, num_classes", [("deeplabv3", 4), ("unet", 3)])
def test_checkpoint_of_another_run(run_copy, model, num_classes):
    path = _foreign_checkpoint(run_copy, model, num_classes)
    before = snapshot(run_copy)
    result = invoke("export", run_copy)
    message = assert_one_line_error(result, path, f"{model}/resnet18", f"{num_classes} classes",
                                    run_copy / "config.toml")
    assert "unet/resnet18 with 4 classes" in message
    assert snapshot(run_copy) == before  # the old export is intact


def test_checkpoint_weights_do_not_fit_its_config(run_copy):
    """Config says U-Net with 4 classes, weights have 3 output channels."""
    path = run_copy / "checkpoints" / "best.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    head = "segmentation_head.0.weight"
    ckpt["model"][head] = ckpt["model"][head][:3]
    ckpt["model"]["segmentation_head.0.bias"] = ckpt["model"]["segmentation_head.0.bias"][:3]
    path.unlink()
    torch.save(ckpt, path)
    result = invoke("eval", run_copy)
    assert_one_line_error(result, path, "does not fit model unet/resnet18 with 4 classes")
    assert not (run_copy / "metrics.json").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_onnx_file(run_copy, damage):
    onnx_path = run_copy / "export" / "model.onnx"
    data = onnx_path.read_bytes()
    replace_file(onnx_path, b"not a protobuf at all" * 10 if damage == "garbage" else data[: len(data) // 2])
    before = snapshot(run_copy)
    if damage == "garbage":
        result = invoke("parity", run_copy, "--backends", "onnxruntime")
    else:
        result = invoke("eval", run_copy, "--backends", "onnxruntime")
    # checked against its sidecar before onnxruntime sees it: a damaged graph is not the one export wrote
    assert_one_line_error(result, onnx_path, "is not the graph model.json describes", "sha256")
    assert snapshot(run_copy) == before  # no parity.json or metrics.json written


def test_input_shape_outside_exported_profile(run_copy):
    """The graph was exported at 64x64, the run now says 96: the sidecar check names both sizes."""
    config = run_copy / "config.toml"
    text = config.read_text()
    replace_file(config, text.replace("size = 64", "size = 96").encode())
    before = snapshot(run_copy)
    result = invoke("eval", run_copy, "--backends", "onnxruntime")
    assert_one_line_error(result, run_copy / "export" / "model.onnx", "it takes 64px inputs, the run 96px")
    assert snapshot(run_copy) == before


# --------------------------------------------------------------------------- where results go


def test_output_path_under_a_file(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("I am not a folder")
    result = invoke("train", "--size", 64, "--max-images", 2, "--output", blocker / "run")
    assert_one_line_error(result, "cannot write to output directory", blocker / "run")
    assert blocker.read_text() == "I am not a folder"


@pytest.fixture
def deny_writes(monkeypatch):
    """Make folders unwritable: chmod for a normal user; root ignores modes, so refuse its writes."""
    locked: list[Path] = []
    restore: list[tuple[Path, int]] = []
    if os.geteuid() != 0:
        def lock(folder: Path) -> None:
            restore.append((folder, folder.stat().st_mode))
            folder.chmod(0o555)
    else:
        def denied(path) -> bool:
            path = Path(os.fsdecode(path)) if not isinstance(path, int) else None
            return path is not None and any(path.is_relative_to(f) and path != f for f in locked)

        def refuse(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

        real_mkdir, real_open, real_os_open = os.mkdir, builtins.open, os.open

        def mkdir(path, *args, **kwargs):
            return refuse(path) if denied(path) else real_mkdir(path, *args, **kwargs)

        def os_open(path, flags, *args, **kwargs):
            writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            return refuse(path) if writing and denied(path) else real_os_open(path, flags, *args, **kwargs)

        def open_(file, mode="r", *args, **kwargs):
            writing = any(c in mode for c in "wax+")
            return refuse(file) if writing and denied(file) else real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", open_)

        def lock(folder: Path) -> None:
            locked.append(folder)
    yield lock
    for folder, mode in restore:
        folder.chmod(mode)


def test_output_directory_not_writable(tmp_path, deny_writes):
    parent = tmp_path / "read-only"
    parent.mkdir()
    deny_writes(parent)
    result = invoke("train", "--size", 64, "--max-images", 2, "--output", parent / "run")
    assert_one_line_error(result, "cannot write to output directory", parent / "run", "Permission denied")


def test_run_directory_not_writable_on_export(run_copy, deny_writes):
    shutil.rmtree(run_copy / "export")
    before = snapshot(run_copy)
    deny_writes(run_copy)
    result = invoke("export", run_copy)  # refused before any work: the run directory's lock cannot be taken
    assert_one_line_error(result, "cannot write to run directory", run_copy, "Permission denied")
    assert snapshot(run_copy) == before


def _disk_full(monkeypatch, after_bytes: int = 0) -> None:
    """os.fsync of a file fails with ENOSPC, as when the disk fills while the data is flushed."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", fsync)


def test_disk_full_during_export_keeps_the_old_file(run_copy, monkeypatch):
    onnx_path = run_copy / "export" / "model.onnx"
    before = snapshot(run_copy)
    _disk_full(monkeypatch)
    result = invoke("export", run_copy)
    assert_one_line_error(result, "cannot write", onnx_path, "No space left on device")
    monkeypatch.undo()
    assert snapshot(run_copy) == before
    assert not temp_files(run_copy)
    import onnx
    onnx.checker.check_model(str(onnx_path))  # the old graph is still whole


def test_disk_full_during_training_then_resume(tmp_path, monkeypatch):
    """The disk fills while epoch 2's last.pt is written: epoch 1's checkpoint and history survive,
    and `train --resume` finishes the run once there is space again."""
    config = tmp_path / "tiny.toml"
    config.write_text(config_to_toml(tiny_config(data={"size": 32, "max_images": 4, "synthetic_images": 12},
                                                 train={"epochs": 2, "batch_size": 4})))
    out = tmp_path / "run"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2 and ".last.pt." in str(f):
            with open(f, "wb") as handle:
                handle.write(b"half of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    result = invoke("train", "--config", config, "--output", out)
    assert_one_line_error(result, "cannot write", out / "checkpoints" / "last.pt", "No space left on device")
    monkeypatch.undo()
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    assert (out / "history.csv").read_text().splitlines()[1].startswith("1,")
    assert len((out / "history.csv").read_text().splitlines()) == 2
    assert not temp_files(out)

    result = invoke("train", "--resume", out)
    assert result.exit_code == 0, result.output
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 2
    assert [line.split(",")[0] for line in (out / "history.csv").read_text().splitlines()[1:]] == ["1", "2"]


def test_os_error_outside_fileio_is_one_line(run_copy, monkeypatch):
    """A write error raised by code that does not go through fileio still ends as one line."""
    import segdeploy.export.onnx

    target = run_copy / "export" / "model.onnx"

    def failing_export(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))
    monkeypatch.setattr(segdeploy.export.onnx, "export_graphs", failing_export)
    assert_one_line_error(invoke("export", run_copy), "cannot write", target, "Read-only file system")


# --------------------------------------------------------------------------- stages and training


@pytest.mark.parametrize("args, needs", [
    (["parity", "{run}", "--backends", "onnxruntime"], "export"),
    (["bench", "{run}", "--backends", "onnxruntime", "--batch-sizes", 1], "export"),
])
def test_stage_missing_says_which_command_to_run(run_copy, args, needs):
    shutil.rmtree(run_copy / "export")
    before = snapshot(run_copy)
    result = invoke(*[run_copy if a == "{run}" else a for a in args])
    assert_one_line_error(result, run_copy / "export" / "model.onnx", f"run `segdeploy {needs}")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("command", ["eval", "export", "parity", "bench"])
def test_not_a_run_directory(tmp_path, command):
    (tmp_path / "stuff").mkdir()
    result = invoke(command, tmp_path / "stuff")
    assert_one_line_error(result, tmp_path / "stuff", "no config.toml", "segdeploy train")
    result = invoke(command, tmp_path / "missing")
    assert_one_line_error(result, "run directory not found", tmp_path / "missing")


def test_export_without_checkpoint(run_copy):
    (run_copy / "checkpoints" / "best.pt").unlink()
    result = invoke("export", run_copy)
    assert_one_line_error(result, run_copy / "checkpoints" / "best.pt", "segdeploy train")


def test_resume_errors(tmp_path, run_copy):
    assert_one_line_error(invoke("train", "--resume", tmp_path / "nothing"), "run directory not found")
    assert_one_line_error(invoke("train", "--resume", run_copy, "--epochs", 5, "--lr", 0.1),
                          "--epochs, --lr", "config.toml")
    last = run_copy / "checkpoints" / "last.pt"
    replace_file(last, last.read_bytes()[:1000])
    before = snapshot(run_copy)
    assert_one_line_error(invoke("train", "--resume", run_copy), last, "corrupt or truncated")
    assert snapshot(run_copy) == before


def test_resume_refuses_an_edited_config(run_copy):
    config = run_copy / "config.toml"
    replace_file(config, config.read_text().replace("lr = 0.001", "lr = 0.002").encode())
    result = invoke("train", "--resume", run_copy)
    assert_one_line_error(result, config, "differs from the config stored in", "last.pt")


def _nan_loss_at(monkeypatch, epoch: int, step: int, steps_per_epoch: int) -> None:
    """The loss of one training step becomes NaN (validation batches are not counted)."""
    import segdeploy.training.loop as train_module

    real = train_module.make_loss

    def make_loss(cfg):
        loss_fn = real(cfg)
        calls = {"train": 0}

        def loss(logits, masks):
            value = loss_fn(logits, masks)
            if torch.is_grad_enabled():
                calls["train"] += 1
                if calls["train"] == (epoch - 1) * steps_per_epoch + step:
                    return value * float("nan")
            return value
        return loss

    monkeypatch.setattr(train_module, "make_loss", make_loss)


def test_nonfinite_loss_stops_with_exit_3_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _nan_loss_at(monkeypatch, epoch=2, step=1, steps_per_epoch=1)
    result = invoke("train", "--size", 32, "--max-images", 4, "--batch-size", 4, "--epochs", 3,
                    "--device", "cpu", "--output", out)
    message = assert_one_line_error(result, "loss became nan at epoch 2, step 1",
                                    out / "checkpoints" / "last.pt", code=EXIT_NONFINITE)
    assert "last good checkpoint kept" in message
    assert "hint: lower the learning rate (--lr)" in result.stderr
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    assert [line.split(",")[0] for line in (out / "history.csv").read_text().splitlines()] == ["epoch", "1"]
    assert not temp_files(out)


def test_huge_learning_rate_diverges_in_first_epoch(tmp_path):
    """A real divergence (no injected NaN): lr 1e12 makes the loss NaN within the first epoch."""
    out = tmp_path / "run"
    result = invoke("train", "--size", 32, "--max-images", 8, "--batch-size", 4, "--epochs", 2,
                    "--lr", 1e12, "--optimizer", "adam", "--device", "cpu", "--output", out)
    assert_one_line_error(result, "loss became nan at epoch 1", "no checkpoint was written yet",
                          code=EXIT_NONFINITE)
    assert (out / "config.toml").is_file()
    assert not (out / "checkpoints" / "last.pt").exists()


def test_debug_flag_shows_the_traceback(tmp_path):
    result = invoke("--debug", "eval", tmp_path / "missing")
    assert isinstance(result.exception, StageMissingError)
    assert result.exit_code != 0
