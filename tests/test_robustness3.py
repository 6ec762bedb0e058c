"""Robustness, round three (issue 24), through the CLI where the behaviour is the CLI's.

Classes of failure: masks whose values fit no accepted convention (decoded silently wrong before); benchmark
cells that outlived their parent; names that became paths outside their folder; class maps that lost a
class; a data root the dataset never read; and the rest of the earlier trial.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_image
from segdeploy.core.config import DataConfig
from segdeploy.data.registry import build_dataset
from test_errors import assert_one_line_error, invoke, run_copy  # noqa: F401

KVASIR = Path("/work/shared/datasets/kvasir-seg")
TINY = ["--size", 32, "--max-images", 4, "--epochs", 1, "--batch-size", 4, "--threads", 2, "--device", "cpu"]

# --------------------------------------------------------------------------- 1. mask values

SHAPE = (32, 40)


def _labels() -> np.ndarray:
    """0 background, a block of 1 and a block of 2 (the 2s only where a test wants three values)."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[4:28, 4:18] = 1
    return labels


def _as_mode(values: np.ndarray, mode: str) -> Image.Image:
    """A mask holding `values`, stored in one of the modes the data layer reads."""
    if mode == "L":
        return Image.fromarray(values.astype(np.uint8))
    if mode == "P":
        image = Image.fromarray(values.astype(np.uint8), "P")
        image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 253)
        return image
    if mode == "RGB":
        return Image.fromarray(np.stack([values.astype(np.uint8)] * 3, axis=-1))
    if mode == "I;16":
        return Image.fromarray(values.astype(np.uint16))
    if mode == "1":
        return Image.fromarray((values > 0).astype(np.uint8) * 255).convert("1")
    raise AssertionError(mode)


def _mask_folder(root: Path, masks: list[Image.Image], suffix: str = ".png") -> Path:
    rng = np.random.default_rng(0)
    for i, mask in enumerate(masks):
        write_image(root / "images" / f"m{i}.png", rng.integers(0, 255, (*SHAPE, 3), dtype=np.uint8))
        (root / "masks").mkdir(parents=True, exist_ok=True)
        mask.save(root / "masks" / f"m{i}{suffix}")
    return root


def _decoded(root: Path, num_classes: int | None = None) -> np.ndarray:
    cfg = DataConfig(dataset="folder", root=str(root), size=list(SHAPE), num_classes=num_classes)
    return build_dataset(cfg, "all").masks


def _soft_edges(labels: np.ndarray) -> np.ndarray:
    """0/255 drawn with anti-aliased edges (a grey ramp two pixels wide), as drawing tools save them."""
    grey = labels.astype(np.float32) * 255
    smooth = (grey + np.roll(grey, 1, 0) + np.roll(grey, 1, 1) + np.roll(grey, -1, 1)) / 4
    return np.round(smooth).astype(np.uint8)


# (stored values, modes that can store them, the classes they must decode to with 2 classes)
BINARY_CONVENTIONS = {
    "0/1 indices": (lambda m: m, ["L", "P", "RGB", "I;16", "1"], lambda m: m),
    "0/255": (lambda m: m * 255, ["L", "RGB", "I;16", "1"], lambda m: m),
    "0/65535": (lambda m: m.astype(np.uint16) * 65535, ["I;16"], lambda m: m),
    "0/1, 255 void": (lambda m: np.where(np.arange(SHAPE[1]) >= 36, 255, m), ["L", "P", "RGB", "I;16"],
                      lambda m: np.where(np.arange(SHAPE[1]) >= 36, 255, m)),
    "0/255 soft edges": (lambda m: _soft_edges(m), ["L", "RGB", "I;16"], lambda m: (_soft_edges(m) > 127)),
}


@pytest.mark.parametrize("convention, mode", [(c, m) for c, (_, modes, _) in BINARY_CONVENTIONS.items() for m in modes])
def test_every_accepted_binary_convention_in_every_mode(tmp_path, convention, mode):
    """The README's "Mask values" table, row by row, in each mask mode the data layer reads."""
    store, _, expected = BINARY_CONVENTIONS[convention]
    labels = _labels()
    root = _mask_folder(tmp_path / "d", [_as_mode(store(labels), mode)] * 2)
    masks = _decoded(root)
    assert np.array_equal(masks[0], expected(labels).astype(np.uint8))


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "I;16"])
def test_index_masks_in_a_binary_folder_are_refused_with_the_values_and_the_flag(tmp_path, mode):
    """Issue 24.1: 0, 1, 2 were decoded as all background (max > 1, thresholded at 127), exit 0."""
    labels = _labels()
    labels[20:28, 24:36] = 2
    root = _mask_folder(tmp_path / "d", [_as_mode(labels, mode)] * 4)
    result = invoke("train", *TINY, "--dataset", "folder", "--data-root", root, "--output", tmp_path / "out")
    assert_one_line_error(result, root / "masks" / "m0.png", "holds 0, 1, 2", "class indices? pass --num-classes 3")
    assert not (tmp_path / "out").exists()
    masks = _decoded(root, num_classes=3)  # what the message says to pass reads them as they are
    assert np.array_equal(masks[0], labels)


@pytest.mark.parametrize("values, found", [
    (lambda m: m * 128, "holds 0, 128"),  # another grey level than 255 for the foreground
    (lambda m: np.where(m == 1, 100, 0) + np.where(np.arange(SHAPE[1]) >= 30, 255, 0), "holds 0, 100, 255"),
    (lambda m: np.tile(np.arange(SHAPE[1]) * 6, (SHAPE[0], 1)), "(40 values)"),  # a grey-level image
])
def test_grey_levels_away_from_an_edge_are_refused(tmp_path, values, found):
    root = _mask_folder(tmp_path / "d", [_as_mode(values(_labels()).astype(np.uint8), "L")] * 4)
    result = invoke("train", *TINY, "--dataset", "folder", "--data-root", root, "--output", tmp_path / "out")
    assert_one_line_error(result, "m0.png", found, "not a binary mask")


def test_jpeg_masks_with_ringing_decode_as_before(tmp_path):
    """JPEG masks (grey levels along the edges) are thresholded at 127; an L JPEG written here and real
    Kvasir-SEG masks (RGB JPEG) decode to exactly what `> 127` gives."""
    big = np.zeros((256, 320), np.uint8)
    big[37:201, 45:150] = 255  # edges inside JPEG blocks: ringing around them
    Image.fromarray(big).save(tmp_path / "m.jpg", quality=60)
    stored = np.asarray(Image.open(tmp_path / "m.jpg"))
    assert len(np.unique(stored)) > 2  # the ringing is there
    from segdeploy.data.decode import binary_mask

    assert np.array_equal(binary_mask(Image.open(tmp_path / "m.jpg")), (stored > 127).astype(np.uint8))
    if not KVASIR.is_dir():
        pytest.skip(f"{KVASIR} not here")
    for mask in sorted((KVASIR / "masks").iterdir())[:3]:
        image = Image.open(mask)
        assert np.array_equal(binary_mask(image), (np.asarray(image.convert("L")) > 127).astype(np.uint8))


@pytest.mark.parametrize("mode", ["L", "RGB", "I;16"])
def test_a_multi_class_run_on_a_binary_folder_is_refused(run_copy, tmp_path, mode):
    """Issue 24.7: a 4-class run evaluated on 0/255 masks: the foreground silently became void."""
    root = _mask_folder(tmp_path / "binary", [_as_mode(_labels() * 255, mode)] * 4)
    result = invoke("eval", run_copy, "--dataset", "folder", "--data-root", root, "--no-figures")
    assert_one_line_error(result, root / "masks", "hold only 0 and 255", "with 4 classes 255 is void")
    result = invoke("train", *TINY, "--dataset", "folder", "--num-classes", 4, "--data-root", root,
                    "--output", tmp_path / "out")
    assert_one_line_error(result, "hold only 0 and 255", "--num-classes 2")


def test_index_ids_beyond_the_class_count_name_the_values(tmp_path):
    labels = _labels()
    labels[20:28, 24:36] = 5
    root = _mask_folder(tmp_path / "d", [_as_mode(labels, "L")] * 4)
    result = invoke("train", *TINY, "--dataset", "folder", "--num-classes", 3, "--data-root", root,
                    "--output", tmp_path / "out")
    assert_one_line_error(result, "class id 5", "3 classes", "holds 0, 1, 5", "pass --num-classes 6")


def test_void_label_is_applied_before_the_values_are_judged(tmp_path):
    """--void-label 7 on 0/255 masks with a 7 border: 7 is void, not a grey level away from an edge."""
    stored = _labels() * 255
    stored[:, :2] = 7
    root = _mask_folder(tmp_path / "d", [_as_mode(stored, "L")] * 2)
    cfg = DataConfig(dataset="folder", root=str(root), size=list(SHAPE), void_label=7)
    masks = build_dataset(cfg, "all").masks
    expected = _labels()
    expected[:, :2] = 255
    assert np.array_equal(masks[0], expected)


# --------------------------------------------------------------------------- 2. bench cells die with their parent


def _cells(parent: int) -> list:
    import psutil

    try:
        children = psutil.Process(parent).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    cells = []
    for child in children:
        try:
            if "segdeploy.bench.cell" in " ".join(child.cmdline()):
                cells.append(child)
        except psutil.Error:  # a short-lived child (git, nvidia-smi) that ended or is a zombie
            pass
    return cells


def _gone(process) -> bool:
    import psutil

    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_bench_cells_die_with_their_parent(run_copy, tmp_path, sig):
    """Issue 24.2: SIGTERM to `segdeploy bench` left the cell running at 100% of a core (and its temporary
    folder); SIGKILL, which the parent cannot handle, too. Now the cell goes within seconds either way."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    log = open(tmp_path / "bench.log", "wb")
    bench = subprocess.Popen([sys.executable, "-m", "segdeploy", "bench", str(run_copy), "--backends", "torch",
                              "--batch-sizes", "1", "--min-iters", "1000000", "--max-time", "600", "--no-accuracy", "--threads", "1",
                              "--device", "cpu"], env={**os.environ, "TMPDIR": str(temp)}, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while not (cells := _cells(bench.pid)) and time.monotonic() < deadline and bench.poll() is None:
            time.sleep(0.2)
        assert cells, (tmp_path / "bench.log").read_text()
        cell = cells[0]
        assert os.getpgid(cell.pid) != os.getpgid(bench.pid)  # a group of its own, stopped as one
        assert list(temp.glob("segdeploy-cell-*"))
        time.sleep(2)  # the cell is importing or timing by now
        bench.send_signal(sig)
        bench.wait(30)
        deadline = time.monotonic() + 30  # a loaded machine: the cell cleans up as it dies
        # after SIGKILL nobody removes the folder (checked below): wait for the cell only, not 30 s for that
        while not (_gone(cell) and (sig == signal.SIGKILL or not list(temp.glob("segdeploy-cell-*")))) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _gone(cell), f"cell {cell.pid} still running 30 s after {sig.name} to its parent"
        left = list(temp.glob("segdeploy-cell-*"))
        if sig == signal.SIGKILL and left:  # a killed parent cleans nothing: the next bench's temp_folder does
            from unittest import mock

            from segdeploy.core.child import temp_folder

            with mock.patch("tempfile.tempdir", str(temp)):
                fresh = temp_folder("segdeploy-cell-")
            left = [path for path in temp.glob("segdeploy-cell-*") if path != fresh]
        assert not left
    finally:
        if bench.poll() is None:
            bench.kill()
        for cell in _cells(bench.pid):
            cell.kill()
        log.close()


# --------------------------------------------------------------------------- 3. names that become paths

STUDY_BASE = """
[data]
size = 32
synthetic_images = 8
max_images = 4
[train]
epochs = 1
batch_size = 4
device = "cpu"
"""


@pytest.mark.parametrize("text, what", [
    ("[[runs]]\nname = '../../escape'\n", "run name '../../escape'"),  # the repro: trained two levels up
    ("[[runs]]\nname = 'a/b'\n", "run name 'a/b'"),
    ("[axes]\n'train.lr' = [0.001]\n[[runs]]\nname = '..'\n", "run name '..'"),
    ("[study]\nname = '..'\n[[runs]]\nname = 'a'\n", "study.name '..'"),
    ("[datasets.'../x']\ndataset = 'synthetic'\n[[runs]]\nname = 'a'\ndataset = '../x'\n", "dataset preset '../x'"),
    ("[[runs]]\nname = '.hidden'\n", "run name '.hidden'"),
])
def test_names_that_become_paths_are_one_component(tmp_path, text, what):
    """Issue 24.3: a run named '../../escape' trained into a folder two levels above the study's output."""
    study = tmp_path / "a" / "b" / "s.toml"
    study.parent.mkdir(parents=True)
    study.write_text(STUDY_BASE + text)
    result = invoke("study", study)
    assert_one_line_error(result, what, "cannot be a file or folder name")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [Path("a"), Path("a/b"), Path("a/b/s.toml")]


def test_derived_names_stay_inside_their_folder():
    from segdeploy.core.names import safe_component
    from segdeploy.evaluation.evaluate import eval_label

    assert safe_component("..") == "_." and safe_component("a/../b") == "a_.._b"
    assert "/" not in eval_label("torch", "fp32", DataConfig(dataset="folder", root="/x/.."), "val", False)
    from segdeploy.runtime.variants import BACKENDS

    with pytest.raises(Exception, match="backend name '../x' cannot be a file or folder name"):
        BACKENDS.register("../x", BACKENDS["torch"])


# --------------------------------------------------------------------------- 4. class maps

def test_duplicate_class_names_are_refused_and_never_overwrite(tmp_path):
    """Issue 24.4: two classes named alike trained with exit 0 and per_class lost one of them."""
    import json

    labels = _labels()
    labels[20:28, 24:36] = 2
    root = _mask_folder(tmp_path / "d", [_as_mode(labels, "L")] * 4)
    (root / "classes.json").write_text(json.dumps({"classes": ["background", "road", "road"]}))
    result = invoke("train", *TINY, "--dataset", "folder", "--data-root", root, "--output", tmp_path / "out")
    assert_one_line_error(result, root / "classes.json", "two classes share the name 'road'")
    (root / "classes.json").write_text(json.dumps({"classes": ["background", " ", "road"]}))
    result = invoke("train", *TINY, "--dataset", "folder", "--data-root", root, "--output", tmp_path / "out")
    assert_one_line_error(result, "every class needs a \"name\" (not empty)")
    from segdeploy.data.metrics import summarize

    per_class = summarize(np.eye(3, dtype=np.int64), ["bg", "road", "road"])["per_class"]
    assert list(per_class) == ["bg", "road (1)", "road (2)"]


# --------------------------------------------------------------------------- 6. a data root the dataset does not read

def test_a_data_root_the_dataset_does_not_read_is_refused(run_copy, tmp_path):
    """Issue 24.6: eval RUN --data-root OTHER on a synthetic run evaluated synthetic images again and recorded
    data_root=OTHER, in_domain false: a cross-dataset result that never was."""
    other = _mask_folder(tmp_path / "other", [_as_mode(_labels(), "L")] * 2)
    before = sorted(p.name for p in (run_copy / "eval").iterdir()) if (run_copy / "eval").is_dir() else []
    result = invoke("eval", run_copy, "--data-root", other, "--no-figures")
    assert_one_line_error(result, "dataset 'synthetic' is generated and reads no data root", str(other),
                          "--dataset folder")
    assert (sorted(p.name for p in (run_copy / "eval").iterdir()) if (run_copy / "eval").is_dir() else []) == before
    result = invoke("train", *TINY, "--data-root", other, "--output", tmp_path / "out")  # synthetic is the default
    assert_one_line_error(result, "reads no data root")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 7. the rest of the earlier trial

def test_threads_above_the_cpu_count_are_capped_with_a_warning(run_copy):
    """--threads 999 was accepted and hung the machine (p50 18.5 s, load ~900)."""
    import json

    from segdeploy.core.env import usable_cpus

    result = invoke("bench", run_copy, "--backends", "torch", "--batch-sizes", 1, "--iters", 3, "--warmup", 1,
                    "--max-warmup", 3, "--no-accuracy", "--in-process", "--threads", 999, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"--threads 999 is more than the {usable_cpus()} CPUs" in " ".join(result.stderr.split())
    bench = json.loads((run_copy / "bench.json").read_text())
    assert bench["environment"]["torch_threads"] == usable_cpus()
    assert len(bench["environment"]["load_average_at_start"]) == 3


def test_toml_with_a_byte_order_mark_is_read(tmp_path):
    """A TOML file saved with a UTF-8 BOM: 'Invalid statement (at line 1, column 1)'."""
    config = tmp_path / "c.toml"
    config.write_bytes(b"\xef\xbb\xbf[data]\nsize = 32\nmax_images = 4\n[train]\nepochs = 1\nbatch_size = 4\ndevice = 'cpu'\n")
    result = invoke("train", "--config", config, "--output", tmp_path / "out", "--threads", 2)
    assert result.exit_code == 0, result.output
    assert "size = 32" in (tmp_path / "out" / "config.toml").read_text()
    config.write_bytes(b"[data]\nsize = 32 # \xe9t\xe9\n")  # Latin-1
    result = invoke("train", "--config", config, "--output", tmp_path / "out2")
    assert_one_line_error(result, config, "not UTF-8 text")


def test_ambiguous_stems_and_broken_links_are_named(tmp_path):
    root = _mask_folder(tmp_path / "d", [_as_mode(_labels(), "L")] * 3)
    shutil.copy(root / "images" / "m0.png", root / "images" / "m0.jpg")
    result = invoke("train", *TINY, "--dataset", "folder", "--data-root", root, "--output", tmp_path / "out")
    assert_one_line_error(result, root / "images" / "m0.jpg", root / "images" / "m0.png", "both sample 'm0'")
    (root / "images" / "m0.jpg").unlink()
    (root / "images" / "m1.png").unlink()
    (root / "images" / "m1.png").symlink_to(tmp_path / "gone.png")
    result = invoke("train", *TINY, "--dataset", "folder", "--data-root", root, "--output", tmp_path / "out")
    assert_one_line_error(result, root / "images" / "m1.png", "is a broken link", f"points to {tmp_path / 'gone.png'}")
    assert not (tmp_path / "out").exists()


def test_all_void_evaluation_writes_strict_json_and_says_why(run_copy, tmp_path):
    """metrics.json had "miou": NaN (not JSON) after an all-void evaluation."""
    import json

    void = np.full((64, 64), 255, np.uint8)
    root = tmp_path / "void"
    rng = np.random.default_rng(0)
    for i in range(2):
        write_image(root / "images" / f"v{i}.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        write_image(root / "masks" / f"v{i}.png", void)
    result = invoke("eval", run_copy, "--dataset", "folder", "--data-root", root, "--no-figures")
    assert result.exit_code == 0, result.output
    assert "hold no labelled pixel (all void, 255)" in " ".join(result.stderr.split())
    text = (run_copy / "eval" / "torch-fp32-folder_void-all" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert metrics["miou"] is None and metrics["pixel_accuracy"] is None


def test_report_refuses_the_same_run_twice(run_copy, tmp_path):
    """`segdeploy report A A` counted one run as two seeds."""
    (tmp_path / "alias").symlink_to(run_copy)
    for runs in ([run_copy, run_copy], [run_copy, tmp_path / "alias"]):
        result = invoke("report", *runs, "--output", tmp_path / "report")
        assert_one_line_error(result, "is given twice", "each run counts once")
    assert not (tmp_path / "report").exists()
