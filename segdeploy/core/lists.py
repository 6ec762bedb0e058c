"""Comma-separated lists from the command line: the one parser of names and numbers, and of batch sizes."""

from __future__ import annotations

from segdeploy.core.errors import ConfigError


def parse_list(text: str | None, item: type = str) -> list | None:
    """'1,8, 32' -> [1, 8, 32]; None stays None."""
    if text is None:
        return None
    try:
        return [item(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as a comma-separated list of {item.__name__}") from None


def parse_batch_sizes(text: str | list[int] | None, flag: str = "--batch-sizes", allow_auto: bool = True
                      ) -> list[int] | str | None:
    """The one parser of batch-size lists: '1,2,4' -> [1, 2, 4]; 'auto' -> 'auto' where `allow_auto`
    (bench: doubling from 1 until the first OOM); None stays None."""
    if text is None:
        return None
    if isinstance(text, list):
        sizes = text
    elif allow_auto and text.strip().lower() == "auto":
        return "auto"
    else:
        try:
            sizes = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            words = "comma-separated integers or 'auto'" if allow_auto else "comma-separated integers"
            raise ConfigError(f"{flag} must be {words}, got {text!r}") from None
    if not sizes or any(b < 1 for b in sizes):
        raise ConfigError(f"batch sizes must be integers >= 1, got {text!r}")
    return sizes
