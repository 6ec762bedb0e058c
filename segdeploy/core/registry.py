"""One registry shape for every family (models, datasets, losses, runtime backends).

A registry maps a name to an entry (a dataclass describing the member); an unknown name is a one-line
ConfigError that lists the known ones, so every family reports it the same way.
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from segdeploy.core.errors import ConfigError
from segdeploy.core.names import check_name

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    def __init__(self, family: str):
        self.family = family
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, entry: Entry) -> Entry:
        check_name(name, f"{self.family} name")  # names become file names (labels, caches, figures)
        self._entries[name] = entry
        return entry

    def __setitem__(self, name: str, entry: Entry) -> None:
        self.register(name, entry)

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __getitem__(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.family} {name!r} (known: {self.known()})") from None

    def get(self, name: str, default: Entry | None = None) -> Entry | None:
        return self._entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def names(self) -> list[str]:
        return list(self._entries)

    def known(self) -> str:
        return ", ".join(self._entries)
