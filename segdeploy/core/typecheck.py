"""Config values read from TOML or flags checked against their dataclass field's annotation."""

from __future__ import annotations

import types
import typing
from typing import Any

from segdeploy.core.errors import ConfigError


def check_type(value: Any, annotation: Any, where: str) -> Any:
    """Return `value` converted to `annotation` (int -> float allowed), or raise ConfigError."""
    hint = annotation
    if isinstance(hint, str):
        hint = eval(hint, vars(typing) | {"list": list})  # annotations are strings (PEP 563)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return check_type(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [check_type(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value
