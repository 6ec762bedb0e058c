"""`segdeploy predict` through the CLI: masks equal to eval's argmax, original-size masks, the one decode path
(EXIF orientation, no JPEG draft), bad files, reruns, Ctrl-C and videos."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from conftest import clone_run
from segdeploy.cli import app
from segdeploy.core import pixels
from segdeploy.core.config import DataConfig
from segdeploy.data.registry import build_dataset
from segdeploy.evaluation.parity import DEFAULT_TOLERANCES
from segdeploy.runtime.base import iterate_outputs
from segdeploy.runtime.variants import load_runner

KVASIR = Path("/work/shared/datasets/kvasir-seg")
needs_kvasir = pytest.mark.skipif(not (KVASIR / "images").is_dir(), reason=f"Kvasir-SEG not found at {KVASIR}")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def kvasir_copy(root: Path, count: int = 4, size: int | None = None) -> Path:
    """A Kvasir-style folder (images/*.jpg, masks/*.jpg) of the first `count` Kvasir files; with `size`, both
    resized to size x size and stored losslessly as PNG (so the model size is the original size)."""
    names = sorted(p.name for p in (KVASIR / "images").iterdir())[:count]
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
        for name in names:
            if size is None:
                shutil.copy(KVASIR / folder / name, root / folder / name)
                continue
            image = Image.open(KVASIR / folder / name).convert("RGB" if folder == "images" else "L")
            image.resize((size, size), Image.BILINEAR if folder == "images" else Image.NEAREST).save(
                root / folder / Path(name).with_suffix(".png"))
    return root


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height (what a gigapixel file's header says) without its pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def graphs_run(graphs_run, tmp_path_factory):
    """A private clone of the session's tiny run (synthetic, 4 classes, 64 px) with fp32, fp16 and int8 graphs
    (tests/conftest.py: its checkpoints and graphs by link): predict writes its masks into this one."""
    return clone_run(graphs_run, tmp_path_factory.mktemp("predict") / "run")


# ---------------------------------------------------------------------------------------------- one decode path


@needs_kvasir
def test_eval_and_predict_see_identical_input_arrays(tmp_path, monkeypatch):
    from segdeploy.data.preprocess import resize_image
    from segdeploy.deploy.predict import prepare
    from segdeploy.deploy.predict_inputs import open_source

    root = kvasir_copy(tmp_path / "kvasir")
    config = DataConfig(dataset="kvasir", root=str(root), size=[48, 64], augment="none")
    cached_first, cached_again = build_dataset(config, "all"), build_dataset(config, "all")
    assert cached_first.storage is not None and cached_again.storage is not None
    monkeypatch.setenv("SEGDEPLOY_NO_CACHE", "1")
    in_memory = build_dataset(config, "all")
    assert in_memory.storage is None
    items = list(open_source(str(root / "images"), pixels.DEFAULT_MAX_MEGAPIXELS).items)
    assert [Path(item.source).stem for item in items] == in_memory.ids
    for index, item in enumerate(items):
        predicted = prepare(item, (48, 64), uint8_input=True, keep_original=False).model_input
        for dataset in (cached_first, cached_again, in_memory):
            np.testing.assert_array_equal(dataset.images[index], predicted)
        # a freshly opened JPEG (what JPEG draft() used to shrink while decoding) gives the same pixels
        np.testing.assert_array_equal(resize_image(Image.open(item.source), (48, 64)), predicted)


def test_exif_orientation_is_applied_to_images_and_masks(tmp_path):
    """A phone photo stored landscape with orientation 6 (display rotated 90 degrees) and its mask drawn on
    the displayed, portrait image: training reads them aligned, predict writes a portrait mask."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        displayed = rng.integers(0, 255, (40, 24, 3), dtype=np.uint8)  # portrait, as viewers show it
        stored = np.rot90(displayed, k=1)  # orientation 6: the viewer turns it 90 degrees clockwise
        exif = Image.Exif()
        exif[pixels.EXIF_ORIENTATION] = 6
        Image.fromarray(np.ascontiguousarray(stored)).save(root / "images" / f"p{i}.jpg", exif=exif, quality=95)
        mask = np.zeros((40, 24), np.uint8)
        mask[5:20, 3:12] = 1
        Image.fromarray(mask).save(root / "masks" / f"p{i}.png")
    (root / "classes.json").write_text(json.dumps({"classes": [{"name": "bg", "color": [0, 0, 0]},
                                                               {"name": "thing", "color": [200, 30, 60]}]}))
    assert pixels.read_rgb(root / "images" / "p0.jpg").shape == (40, 24, 3)
    run = tmp_path / "run"
    result = invoke("train", "--dataset", "folder", "--data-root", root, "--size", 32, "--epochs", 1,
                    "--max-steps", 1, "--batch-size", 2, "--device", "cpu", "--output", run)
    assert result.exit_code == 0, result.output  # before: "mask ... is 24x40 but its image ... is 40x24"
    result = invoke("predict", run, root / "images" / "p0.jpg", "--output", tmp_path / "out")
    assert result.exit_code == 0, result.output
    written = Image.open(tmp_path / "out" / "p0.png")
    assert written.size == (24, 40) and written.mode == "P"  # portrait, with the class map's palette
    assert written.getpalette()[:6] == [0, 0, 0, 200, 30, 60]


# ---------------------------------------------------------------------------------------------- correctness


def _model_size_folder(tmp_path: Path) -> Path:
    if (KVASIR / "images").is_dir():
        return kvasir_copy(tmp_path / "kvasir64", count=6, size=64)
    from tests.conftest import make_folder_dataset

    return make_folder_dataset(tmp_path / "kvasir64", count=6, size=64)


@pytest.mark.parametrize("backend,precision", [
    ("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "int8"),
    pytest.param("openvino", "fp32", marks=pytest.mark.openvino),
])
def test_masks_at_model_size_equal_the_argmax_eval_computes(graphs_run, tmp_path, backend, precision):
    if backend == "openvino":
        pytest.importorskip("openvino")
    root = _model_size_folder(tmp_path)
    out = tmp_path / "masks"
    result = invoke("predict", graphs_run.path, root / "images", "--backend", backend, "--precision", precision,
                    "--output", out, "--batch-size", 4)
    assert result.exit_code == 0, result.output
    dataset = build_dataset(DataConfig(dataset="kvasir", root=str(root), size=64, augment="none"), "all")
    runner = load_runner(backend, graphs_run, precision)
    try:  # eval's predictions: the argmax of iterate_outputs over its dataset (evaluation.predict_dataset)
        eval_masks = np.concatenate([logits.argmax(1) for _, logits in iterate_outputs(runner, dataset, 4)])
    finally:
        runner.close()
    predicted = np.stack([read_mask(out / f"{image_id}.png") for image_id in dataset.ids])
    agreement = float((predicted == eval_masks).mean())
    # fp32: the same runner on the same pixels; reduced precisions: batches of other sizes may round
    # differently, so within the parity tolerance
    required = 1.0 if precision == "fp32" else DEFAULT_TOLERANCES[precision].min_agreement
    assert agreement >= required, (backend, precision, agreement)
    report = json.loads((out / "predictions.json").read_text())
    assert report["variant"].startswith(f"{backend}/{precision}") and len(report["images"]) == len(dataset)


def test_original_size_mask_is_the_argmax_of_bilinear_resized_logits(trained_run, tmp_path):
    image = np.random.default_rng(3).integers(0, 255, (23, 37, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "small.png")
    result = invoke("predict", trained_run.path, tmp_path / "small.png", "--output", tmp_path / "out", "--overlay")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "small.overlay.jpg").size == (37, 23)
    runner = load_runner("torch", trained_run)
    try:
        model_input = np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR))
        logits = runner.infer(pixels.normalize(model_input[None]))
    finally:
        runner.close()
    by_hand = F.interpolate(torch.from_numpy(logits), size=(23, 37), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "small.png"), by_hand[0].argmax(0).numpy())
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"][0]
    assert (record["height"], record["width"]) == (23, 37)
    assert abs(sum(record["class_fractions"].values()) - 1) < 1e-5 and set(record["seconds"]) >= {"decode", "encode"}


@pytest.mark.parametrize("classes", [2, 3])  # two classes take the sign of the resized difference
@pytest.mark.parametrize("hw", [(23, 37), (64, 64), (130, 97), (5, 3)])
def test_resize_logits_matches_torch_bilinear(hw, classes):
    logits = np.random.default_rng(hw[0]).normal(size=(classes, 16, 12)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(logits)[None], size=hw, mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(pixels.resize_logits(logits, hw), expected, atol=1e-5)
    np.testing.assert_array_equal(pixels.logits_to_mask(logits, hw, rows_per_step=7), expected.argmax(0))


def test_deployed_variant_is_the_default(graphs_run, tmp_path):
    from segdeploy.core import fileio

    run_path = tmp_path / "run"
    shutil.copytree(graphs_run.path, run_path, ignore=shutil.ignore_patterns("predict"))
    fileio.write_json(run_path / "deploy" / "manifest.json", {"variant": "onnxruntime", "precision": "fp16"})
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    result = invoke("predict", run_path, tmp_path / "a.png")
    assert result.exit_code == 0, result.output
    report = json.loads((run_path / "predict" / "a" / "predictions.json").read_text())
    assert report["variant"].startswith("onnxruntime/fp16") and "manifest.json" in report["variant_chosen_by"]


# ---------------------------------------------------------------------------------------------- sources, errors


def test_bad_files_are_skipped_with_one_line_each_and_exit_1(trained_run, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(np.full((30, 20, 3), 90, np.uint8)).save(folder / "good.png")
    Image.fromarray(np.full((10, 12, 3), 20, np.uint8)).save(folder / "sub" / "nested.jpg")
    (folder / "notes.jpg").write_text("not an image")
    (folder / "readme.md").write_text("not an image extension: not listed")
    (folder / "cut.png").write_bytes((folder / "good.png").read_bytes()[:60])
    png_header_only(folder / "huge.png", 20000, 20000)
    result = invoke("predict", trained_run.path, folder, "--output", tmp_path / "out")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("skipped:")]
    assert len(lines) == 3 and "3 file(s) skipped" in result.output
    assert any("notes.jpg" in line and "not an image file" in line for line in lines)
    assert any("huge.png is 20000x20000 pixels (400 megapixels)" in line for line in lines)
    assert "Traceback" not in result.output
    assert read_mask(tmp_path / "out" / "good.png").shape == (30, 20)
    assert read_mask(tmp_path / "out" / "sub" / "nested.png").shape == (10, 12)
    report = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert {Path(s["source"]).name for s in report["skipped"]} == {"notes.jpg", "cut.png", "huge.png"}


def test_a_very_large_image_in_a_dataset_is_one_line_and_the_limit_can_be_raised(tmp_path):
    from tests.conftest import make_folder_dataset

    root = make_folder_dataset(tmp_path / "data", count=4, size=16)
    png_header_only(root / "images" / "img000.png", 20000, 20000)
    args = ["train", "--dataset", "folder", "--data-root", root, "--size", 32, "--epochs", 1, "--max-steps", 1,
            "--device", "cpu", "--output", tmp_path / "run"]
    result = invoke(*args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "img000.png is 20000x20000 pixels (400 megapixels), over the limit of 150 megapixels" in result.output
    assert "--max-megapixels" in result.output
    (root / "images" / "img000.png").unlink()
    (root / "masks" / "img000.png").unlink()
    lowered = invoke(*args, "--max-megapixels", 0.0001)  # the setting is the limit (images are 24x16)
    assert lowered.exit_code == 2 and "24x16 pixels (0.000384 megapixels), over the limit of 0.0001 megapixels" in lowered.output


@pytest.mark.parametrize("kind", ["glob", "list"])
def test_glob_and_list_sources(trained_run, tmp_path, kind):
    for name in ("a/x.png", "b/y.jpg", "b/x.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((12, 9, 3), 70, np.uint8)).save(tmp_path / name)
    if kind == "glob":
        source = str(tmp_path / "*" / "*.png")
    else:
        source = tmp_path / "files.txt"
        source.write_text("# images to segment\na/x.png\nb/x.png\n\nb/y.jpg\n")
    result = invoke("predict", trained_run.path, source, "--output", tmp_path / "out")
    assert result.exit_code == 0, result.output
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png"))
    assert written == (["a/x.png", "b/x.png"] if kind == "glob" else ["a/x.png", "b/x.png", "b/y.png"])


@pytest.mark.parametrize("make", [lambda p: p / "nothing-here", lambda p: p.mkdir() or p])
def test_missing_or_empty_source_is_exit_2(trained_run, tmp_path, make):
    source = make(tmp_path / "src")
    result = invoke("predict", trained_run.path, source)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "error:" in result.output, result.output


def test_a_rerun_keeps_written_masks_and_overwrite_redoes_them(trained_run, tmp_path):
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    out = tmp_path / "out"  # inside the source folder: its masks are not taken as images
    args = ["predict", trained_run.path, tmp_path, "--output", out]
    assert invoke(*args).exit_code == 0
    (out / "1.png").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    result = invoke(*args)
    assert result.exit_code == 0 and "1 masks written" in result.output and "2 kept" in result.output
    assert all(out.joinpath(name).stat().st_mtime_ns == t for name, t in before.items())
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == 3
    assert "3 masks written" in invoke(*args, "--overwrite").output


def test_ctrl_c_leaves_complete_files_and_says_how_to_continue(trained_run, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    count = 30
    for i in range(count):
        Image.fromarray(np.full((120, 160, 3), i, np.uint8)).save(folder / f"{i:03d}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "segdeploy", "predict", str(trained_run.path), str(folder), "--output",
               str(out), "--batch-size", "1", "--workers", "1"]
    # SIGINT back to its default in the child: a pytest started in the background by a non-interactive shell
    # ignores SIGINT, its children inherit that, and Python then installs no KeyboardInterrupt handler
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(out.glob("*.png")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "run it again with `segdeploy predict" in stderr
    written = sorted(out.glob("*.png"))
    assert 0 < len(written) < count and not [p for p in out.iterdir() if p.name.startswith(".")]
    for path in written:
        assert read_mask(path).shape == (120, 160)  # complete files only
    listed = {r["mask"] for r in json.loads((out / "predictions.json").read_text())["images"]}
    assert listed == {p.name for p in written}
    result = invoke("predict", trained_run.path, folder, "--output", out)
    assert result.exit_code == 0 and f"{len(written)} kept" in result.output


def test_video_frames_become_numbered_masks(trained_run, tmp_path):
    av = pytest.importorskip("av")
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((32, 48, 3), 60 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    out = tmp_path / "out"
    result = invoke("predict", trained_run.path, video, "--output", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == [pixels.frame_name(i) for i in (1, 2, 3)]
    assert read_mask(out / "frame_000002.png").shape == (32, 48)
    sources = [r["source"] for r in json.loads((out / "predictions.json").read_text())["images"]]
    assert sources == [f"{video}#frame={i}" for i in (1, 2, 3)]
