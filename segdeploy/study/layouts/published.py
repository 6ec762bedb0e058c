"""Numbers a seed study published, read from a small TOML file beside the study file.

The file has a `[source]` table (where the numbers come from and under which conditions) and one array of
tables per published table, e.g. `[[baselines]]`, each row naming the study's run (`run = "unet-kvasir"`)
and holding the numbers exactly as the seed printed them. A table layout (study/layouts/) looks rows up by
run name, so the seed's number lands next to ours wherever the names match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segdeploy.core.config import read_toml
from segdeploy.core.errors import ConfigError


@dataclass
class Published:
    path: Path
    source: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def find(self, table: str, **match: Any) -> dict[str, Any] | None:
        """The first row of `table` whose keys equal `match` (e.g. run="unet-kvasir"), or None."""
        return next(iter(self.find_all(table, **match)), None)

    def find_all(self, table: str, **match: Any) -> list[dict[str, Any]]:
        return [row for row in self.tables.get(table, []) if all(row.get(k) == v for k, v in match.items())]

    def describe(self) -> str:
        """One line: title, author, date, and the conditions the numbers were measured under."""
        parts = [str(self.source[k]) for k in ("title", "author", "date") if self.source.get(k)]
        text = ", ".join(parts) or str(self.path)
        if self.source.get("setup"):
            text += f". Their setup: {self.source['setup']}"
        return text


def load_published(path: Path, known_tables: tuple[str, ...]) -> Published:
    """Read and check a published-numbers file; every problem is a ConfigError naming the file."""
    raw = read_toml(path, "published numbers file")
    source = raw.pop("source", {})
    if not isinstance(source, dict):
        raise ConfigError(f"{path}: [source] must be a table")
    tables: dict[str, list[dict[str, Any]]] = {}
    for name, rows in raw.items():
        if name not in known_tables:
            raise ConfigError(f"{path}: unknown table {name!r} (this layout reads: {', '.join(known_tables)})")
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise ConfigError(f"{path}: {name} must be an array of tables ([[{name}]])")
        for index, row in enumerate(rows):
            for key, value in row.items():
                if not isinstance(value, (int, float, str)) or isinstance(value, bool):
                    raise ConfigError(f"{path}: {name}[{index}].{key} must be a number or a name, got {value!r}")
        tables[name] = rows
    return Published(path, source, tables)
