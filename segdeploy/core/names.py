"""Names that become file or folder names (study and run names, dataset presets, registry entries, run
names in reports, evaluation labels): one path component of safe characters, checked here and nowhere else.

`check_name` refuses a name a user gave (`../../escape`, `a/b`, `.hidden`, ``) with a one-line error;
`safe_component` turns a name segdeploy derives (a run folder's name, a label) into such a component.
"""

from __future__ import annotations

import re

from segdeploy.core.errors import ConfigError

SAFE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+=-]{0,199}")
ALLOWED = "letters, digits and . _ + = - (not starting with '.'; at most 200 characters)"


def check_name(value: object, what: str) -> str:
    """`value` when it is one safe path component, else a ConfigError naming `what` and the value."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ConfigError(f"{what} {value!r} cannot be a file or folder name: use {ALLOWED}")
    return value


def safe_component(text: str) -> str:
    """`text` as one safe path component: other characters become '_', a leading '.' too."""
    cleaned = re.sub(r"[^A-Za-z0-9._+=-]", "_", str(text))[:200] or "_"
    return "_" + cleaned[1:] if cleaned.startswith(".") else cleaned
