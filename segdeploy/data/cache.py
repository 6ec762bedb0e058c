"""The dataset cache: every (dataset, root, split, size, decoding, file list with sizes and mtimes) is
decoded once into uint8 .npy arrays under a cache folder, and every later command memory-maps them.

Where: $SEGDEPLOY_CACHE (`--cache-dir`), else $XDG_CACHE_HOME/segdeploy, else ~/.cache/segdeploy.
SEGDEPLOY_NO_CACHE=1 (`--no-cache`) decodes into memory instead. An entry is written into a temporary
folder and renamed into place, so a reader never sees a half-written entry and concurrent writers
cannot corrupt one (the first rename wins; the other writer drops its copy and maps the winner's). A
changed, added or removed file changes the entry's key, so a stale entry is never read; it is deleted
when its replacement is written. A cache that cannot be written gives one warning, then the data is
decoded into memory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import mmap
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from segdeploy.core import fileio
from segdeploy.core.errors import WRITE_ERRNOS

CACHE_VERSION = 2  # bump when decoding or resizing changes what an entry holds
ENV_DIR, ENV_OFF = "SEGDEPLOY_CACHE", "SEGDEPLOY_NO_CACHE"
_PAGE = mmap.PAGESIZE
_warned: set[str] = set()


def cache_root() -> Path | None:
    """The cache folder, or None when the cache is switched off."""
    if os.environ.get(ENV_OFF, "") not in ("", "0"):
        return None
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segdeploy"


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def entry_path(root: Path, identity: dict, files: list[Path]) -> Path:
    """ROOT/<dataset>-<split>-<HxW>-<what>/<content>: `what` hashes the identity (dataset, root, split,
    size, decoding), `content` the files' paths, sizes and modification times."""
    slot = _digest({**identity, "version": CACHE_VERSION})[:16]
    stats = []
    for path in files:
        st = path.stat()
        stats.append([str(path), st.st_size, st.st_mtime_ns])
    height, width = identity["size"]
    folder = f"{identity['dataset']}-{identity['split']}-{height}x{width}-{slot}"
    return root / folder / _digest([slot, stats])[:24]


class CacheEntry:
    """images (N x H x W x 3) and masks (N x H x W), uint8, memory-mapped read-only from one entry."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._map()

    def _map(self) -> None:
        self._image_map, self._image_offset, self.images = _map_npy(self.path / "images.npy")
        self._mask_map, self._mask_offset, self.masks = _map_npy(self.path / "masks.npy")

    def release(self, index: int) -> None:
        """Drop sample `index`'s pages from this process's resident set (they stay in the page cache)."""
        for mapping, offset, array in ((self._image_map, self._image_offset, self.images),
                                       (self._mask_map, self._mask_offset, self.masks)):
            row = array[0].nbytes if len(array) else 0
            start = offset + index * row
            first = start - start % _PAGE
            end = min(len(mapping), math.ceil((start + row) / _PAGE) * _PAGE)
            if end > first:
                mapping.madvise(mmap.MADV_DONTNEED, first, end - first)

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._map()


def _map_npy(path: Path) -> tuple[mmap.mmap, int, np.ndarray]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if fortran_order or len(mapping) != offset + math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{path} is not a complete C-ordered array")
    return mapping, offset, np.frombuffer(mapping, dtype, math.prod(shape), offset).reshape(shape)


def _open_entry(path: Path, shape: tuple[int, int, int]) -> CacheEntry | None:
    """The entry at `path` if it is complete and has the expected shape; a damaged one is removed."""
    if not (path / "entry.json").is_file():
        return None
    try:
        entry = CacheEntry(path)
        if entry.images.shape == (*shape, 3) and entry.masks.shape == shape:
            return entry
    except (OSError, ValueError):
        pass
    shutil.rmtree(path, ignore_errors=True)
    return None


def load_cached(identity: dict, files: list[Path], shape: tuple[int, int, int],
                fill: Callable[[Callable], None]) -> CacheEntry | None:
    """The cache entry for these files, written first when missing (`fill(write)` decodes every
    sample into `write(index, image, mask)`); None when the cache is off or cannot be written."""
    root = cache_root()
    if root is None:
        return None
    path = entry_path(root, identity, files)
    entry = _open_entry(path, shape)
    if entry is not None:
        return entry
    try:
        _write_entry(path, identity, shape, fill)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS and exc.errno not in (errno.ENOENT,):
            raise
        _warn_once(root, exc)
        return None
    _remove_stale(path)
    return _open_entry(path, shape)


def _write_entry(path: Path, identity: dict, shape: tuple[int, int, int], fill: Callable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        with open(tmp / "images.npy", "wb") as images, open(tmp / "masks.npy", "wb") as masks:
            _write_header(images, (*shape, 3))
            _write_header(masks, shape)
            written = [0]

            def write(index: int, image: np.ndarray, mask: np.ndarray) -> None:
                if index != written[0]:
                    raise ValueError(f"samples must be written in order: got {index}, expected {written[0]}")
                images.write(np.ascontiguousarray(image, np.uint8).tobytes())
                masks.write(np.ascontiguousarray(mask, np.uint8).tobytes())
                written[0] += 1

            fill(write)
            for f in (images, masks):
                f.flush()
                os.fsync(f.fileno())
        (tmp / "entry.json").write_text(json.dumps({**identity, "images": shape[0], "version": CACHE_VERSION}))
        try:
            os.rename(tmp, path)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process wrote the same entry first: use its copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_header(f, shape: tuple[int, ...]) -> None:
    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})


def _remove_stale(path: Path) -> None:
    """Other entries for the same dataset/root/split/size (older file lists), and temporary folders
    of writers that died."""
    for other in path.parent.iterdir():
        if other.name == path.name:
            continue
        if other.name.startswith("."):
            pid = other.name.split(".")[-3] if other.name.count(".") >= 3 else ""
            if pid.isdigit() and fileio.process_alive(int(pid)):
                continue
        shutil.rmtree(other, ignore_errors=True)




def _warn_once(root: Path, exc: OSError) -> None:
    from segdeploy.core.progress import err_console

    if str(root) in _warned:
        return
    _warned.add(str(root))
    with contextlib.suppress(Exception):
        err_console.print(f"warning: dataset cache {root} cannot be written ({exc.strerror or exc}): decoding into "
                          f"memory instead (set {ENV_DIR} or --cache-dir to move it, --no-cache to skip it)",
                          highlight=False, soft_wrap=True)
