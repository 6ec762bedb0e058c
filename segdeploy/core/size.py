"""Input sizes: `data.size` is one number (square) or [height, width]; every layer reads it through here."""

from __future__ import annotations

from segdeploy.core.errors import ConfigError


def input_hw(size: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of `data.size`: one number for a square input, or [height, width]."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        return int(size[0]), int(size[1])
    raise ConfigError(f"data.size is one number or [height, width], got {size!r}")


def size_label(size: int | list[int] | tuple[int, int]) -> str:
    """'256' for a square input, '512x1024' (height x width) otherwise."""
    height, width = input_hw(size)
    return str(height) if height == width else f"{height}x{width}"


def parse_size(text: str | None) -> int | list[int] | None:
    """--size: '256' -> 256, '512x1024' -> [512, 1024] (height x width)."""
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise ConfigError(f"--size is one number (256) or HEIGHTxWIDTH (512x1024), got {text!r}")
    return values[0] if len(values) == 1 or values[0] == values[1] else values
