"""The dataset cache: decoded once, memory-mapped after; invalidated by changed files; safe with
concurrent writers; falls back to memory with one warning when it cannot be written."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import make_folder_dataset
from segdeploy.cli import app
from segdeploy.core.config import DataConfig
from segdeploy.data import cache as dataset_cache
from segdeploy.data import dataset as dataset_module
from segdeploy.data.registry import build_dataset


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("SEGDEPLOY_CACHE", str(folder))
    monkeypatch.delenv("SEGDEPLOY_NO_CACHE", raising=False)
    monkeypatch.setattr(dataset_cache, "_warned", set())
    return folder


def folder_config(root: Path) -> DataConfig:
    return DataConfig(dataset="folder", root=str(root), size=32, val_fraction=0.25, augment="none")


def entries(cache: Path) -> list[Path]:
    return sorted(p for slot in cache.iterdir() for p in slot.iterdir())


def in_memory(cfg: DataConfig, split: str, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv("SEGDEPLOY_NO_CACHE", "1")
        dataset = build_dataset(cfg, split)
    assert dataset.storage is None
    return dataset


def test_first_build_writes_later_builds_map_the_same_arrays(tmp_path, cache_dir, monkeypatch):
    root = make_folder_dataset(tmp_path / "d", count=8)
    cfg = folder_config(root)
    first = build_dataset(cfg, "train")
    assert first.storage is not None and len(entries(cache_dir)) == 1
    decoded = []
    monkeypatch.setattr(dataset_module, "decode_sample",
                        lambda *a: decoded.append(a) or pytest.fail("decoded again"))
    second = build_dataset(cfg, "train")
    assert not decoded and isinstance(second.images, np.ndarray) and not second.images.flags.writeable
    monkeypatch.undo()
    plain = in_memory(cfg, "train", monkeypatch)
    for dataset in (first, second):
        np.testing.assert_array_equal(dataset.images, plain.images)
        np.testing.assert_array_equal(dataset.masks, plain.masks)
        assert dataset.ids == plain.ids
    x, y = second[0]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)
    # DataLoader workers get the path, not a copy of the arrays
    copy = pickle.loads(pickle.dumps(second))
    assert len(pickle.dumps(second)) < second.images.nbytes // 4
    np.testing.assert_array_equal(copy.images, plain.images)


def test_a_changed_file_invalidates_the_entry_and_replaces_it(tmp_path, cache_dir):
    root = make_folder_dataset(tmp_path / "d", count=8)
    cfg = folder_config(root)
    before = build_dataset(cfg, "train")
    old_entry = entries(cache_dir)
    mask_path = root / "masks" / f"{before.ids[0]}.png"
    Image.fromarray(np.zeros((48, 56), np.uint8)).save(mask_path)  # an empty mask now
    os.utime(mask_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    after = build_dataset(cfg, "train")
    assert before.masks[0].any() and not after.masks[0].any()
    assert entries(cache_dir) != old_entry and len(entries(cache_dir)) == 1  # the stale entry is gone
    np.testing.assert_array_equal(after.masks[1:], before.masks[1:])


def _build_in_child(root: str, cache: str, barrier, queue) -> None:
    os.environ["SEGDEPLOY_CACHE"] = cache
    original = dataset_module.decode_sample

    def slow(*args):
        time.sleep(0.05)  # both writers are decoding at the same time
        return original(*args)

    dataset_module.decode_sample = slow
    barrier.wait()
    dataset = build_dataset(folder_config(Path(root)), "train")
    queue.put((dataset.images.copy(), dataset.masks.copy()))


def test_concurrent_writers_leave_one_complete_entry(tmp_path, cache_dir, monkeypatch):
    root = make_folder_dataset(tmp_path / "d", count=12)
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_build_in_child, args=(str(root), str(cache_dir), barrier, queue))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    plain = in_memory(folder_config(root), "train", monkeypatch)
    for images, masks in results:
        np.testing.assert_array_equal(images, plain.images)
        np.testing.assert_array_equal(masks, plain.masks)
    slot = [p for p in cache_dir.iterdir()]
    assert len(slot) == 1 and [p.name.startswith(".") for p in slot[0].iterdir()] == [False]
    assert build_dataset(folder_config(root), "train").storage.path == entries(cache_dir)[0]


def test_a_writer_that_lost_the_race_keeps_the_winners_entry(tmp_path, cache_dir):
    shape = (2, 4, 4)
    target = cache_dir / "slot" / "entry"

    def fill(value):
        return lambda write: [write(i, np.full((4, 4, 3), value, np.uint8), np.full((4, 4), value, np.uint8))
                              for i in range(2)]

    dataset_cache._write_entry(target, {"size": [4, 4]}, shape, fill(1))
    dataset_cache._write_entry(target, {"size": [4, 4]}, shape, fill(2))  # same key, second writer
    entry = dataset_cache._open_entry(target, shape)
    assert (entry.images == 1).all() and sorted(p.name for p in target.parent.iterdir()) == ["entry"]


def test_temporary_folders_of_dead_writers_are_removed(tmp_path, cache_dir):
    root = make_folder_dataset(tmp_path / "d", count=4)
    build_dataset(folder_config(root), "train")
    slot = entries(cache_dir)[0].parent
    dead = slot / ".abc.999999999.0123abcd.tmp"  # no such pid
    alive = slot / f".abc.{os.getpid()}.0123abcd.tmp"
    dead.mkdir()
    alive.mkdir()
    (root / "images" / "img000.png").touch()  # new mtime: a new entry is written
    os.utime(root / "images" / "img000.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    build_dataset(folder_config(root), "train")
    assert not dead.exists() and alive.exists()


def test_unwritable_cache_decodes_in_memory_with_one_warning(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SEGDEPLOY_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(dataset_cache, "_warned", set())
    root = make_folder_dataset(tmp_path / "d", count=8)
    train, val = build_dataset(folder_config(root), "train"), build_dataset(folder_config(root), "val")
    assert train.storage is None and val.storage is None and len(train) == 6 and len(val) == 2
    err = capsys.readouterr().err
    assert err.count("warning: dataset cache") == 1 and "decoding into memory" in err


def test_no_cache_and_cache_dir_from_the_cli(tmp_path, monkeypatch):
    # the root options set this process's environment (so that subprocesses follow them): restore it after
    monkeypatch.setenv("SEGDEPLOY_CACHE", os.environ["SEGDEPLOY_CACHE"])
    monkeypatch.setenv("SEGDEPLOY_NO_CACHE", "0")
    root = make_folder_dataset(tmp_path / "d", count=6)
    cache = tmp_path / "moved"
    common = ["train", "--dataset", "folder", "--data-root", str(root), "--size", "32", "--epochs", "1",
              "--max-steps", "1", "--batch-size", "4", "--augment", "none"]
    result = CliRunner().invoke(app, ["--cache-dir", str(cache)] + common + ["--output", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert len(entries(cache)) == 2  # train and val
    result = CliRunner().invoke(app, ["--cache-dir", str(tmp_path / "other"), "--no-cache"] + common
                                + ["--output", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "other").exists()
