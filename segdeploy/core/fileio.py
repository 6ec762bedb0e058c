"""Atomic file writes and hashing: a reader never sees a half-written artefact."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it into place.

    On any failure the temporary file is removed and an existing `path` is left as it was; an OSError
    that means "cannot write here" (disk full, read-only, no permission) becomes a one-line OutputError.
    """
    path = Path(path)
    tmp_path = temp_path_for(path)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise_write_error(exc, path)
        raise


def temp_path_for(path: str | os.PathLike) -> Path:
    """A new empty temporary file beside `path` (its folder made if needed), with `path`'s permissions."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; artefacts get the usual permissions
    except OSError as exc:
        raise_write_error(exc, path)
        raise
    return Path(tmp)


def temp_dir_for(path: str | os.PathLike) -> Path:
    """A new empty temporary folder beside `path` (named like temporary files: stale ones are removed)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    except OSError as exc:
        raise_write_error(exc, path)
        raise


def _file_mode(path: Path) -> int:
    """The mode of the file being replaced, else what open() would give a new file (0666 & ~umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def raise_write_error(exc: OSError, path: Path) -> None:
    from segdeploy.core.errors import WRITE_ERRNOS, OutputError, write_error_message

    if exc.errno in WRITE_ERRNOS:
        raise OutputError(write_error_message(exc, path)) from exc


def is_temp_file(path: Path) -> bool:
    """A temporary file of `atomic_path` (left behind only if a process was killed mid-write)."""
    return path.name.startswith(TEMP_PREFIX) and path.name.endswith(TEMP_SUFFIX)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete what killed writers left in `folder` (not recursive); call only when nothing else writes there."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [p for p in folder.iterdir() if is_temp_file(p)]
    for p in removed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)  # a staging folder of core/unit.py
        else:
            p.unlink(missing_ok=True)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs on this machine (a writer whose temporary files must be left alone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by another user
        return True
    return True


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """Strict JSON: NaN and infinities are written as null (callers say why a value is undefined)."""
    return json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False) + "\n"


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    if type(obj).__module__ == "numpy" and getattr(obj, "dtype", None) is not None and obj.dtype.kind == "f":
        return _finite(obj.tolist())
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json_text(obj))


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_cached(path: str | os.PathLike) -> str:
    """sha256 of a file, computed once per (file, size, modification time) in this process."""
    stat = os.stat(path)
    return _sha256_of(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return sha256_file(path)
