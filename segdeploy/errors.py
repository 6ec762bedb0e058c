"""Errors that the CLI turns into one-line messages with a fixed exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # e.g. parity tolerances not met
EXIT_USAGE = 2  # bad input: paths, config, data, shapes
EXIT_NONFINITE = 3  # training diverged


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


class NonFiniteLossError(SegdeployError):
    exit_code = EXIT_NONFINITE
