"""Errors that the CLI turns into one-line messages with a fixed exit code."""

from __future__ import annotations

import errno

EXIT_CHECK_FAILED = 1  # e.g. parity tolerances not met
EXIT_USAGE = 2  # bad input: paths, config, data, shapes
EXIT_NONFINITE = 3  # training diverged

# OSError numbers that mean "this output cannot be written here": reported in one line, naming the path.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                          errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.EFBIG})


class SegdeployError(Exception):
    """A problem the user can fix; printed as one line, never as a traceback."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class ConfigError(SegdeployError):
    pass


class DataError(SegdeployError):
    pass


class ModelError(SegdeployError):
    pass


class StageMissingError(SegdeployError):
    """A run directory lacks what a command needs (e.g. parity before export)."""


class BackendUnavailable(SegdeployError):
    """An optional library (TensorRT, onnxruntime-gpu, sam2) is missing or unusable here."""


class RunnerClosedError(SegdeployError):
    """A runner was asked for work after `close()` (or after its `with` block ended)."""


class NonFiniteLossError(SegdeployError):
    exit_code = EXIT_NONFINITE


class OutOfMemory(SegdeployError):
    """Memory ran out; the message names the setting to lower."""


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure of torch (CUDA or CPU allocator), NumPy, onnxruntime or TensorRT."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()  # onnxruntime and TensorRT report allocation failures as generic errors
    return not isinstance(exc, SegdeployError) and any(s in text for s in (
        "out of memory", "can't allocate memory", "failed to allocate memory", "cudaerrormemoryallocation"))


def first_line(exc: BaseException) -> str:
    """An exception in one line, for a status, a row or a message: a SegdeployError's first line as it is
    (written for the user), any other exception's as `TypeName: first line` (the type says what broke)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, SegdeployError):
        return lines[0] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class OutputError(SegdeployError):
    """An artefact could not be written (disk full, read-only, no permission); the old file is kept."""


def write_error_message(exc: OSError, path: object | None = None) -> str:
    """'cannot write PATH: No space left on device' for an OSError raised while writing PATH."""
    target = path if path is not None else (exc.filename or "output")
    reason = exc.strerror or type(exc).__name__
    message = f"cannot write {target}: {reason}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        message += " (free some space and run the command again; files written before are intact)"
    return message
