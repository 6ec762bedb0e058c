"""A fresh virtual environment with only the packages named (and what they require), built offline from the
distributions installed in this interpreter: each is packed back into a wheel from its RECORD, then
`pip install --no-index` installs those wheels. Nothing else of this environment (torch, segdeploy) is visible
in it, which `--system-site-packages` would not give."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

SKIPPED_METADATA = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")


class OfflineVenvError(RuntimeError):
    pass


def requirement_closure(names: list[str]) -> list[metadata.Distribution]:
    """The installed distributions of `names` and of everything they require (extras left out)."""
    from packaging.requirements import Requirement

    found: dict[str, metadata.Distribution] = {}
    queue = list(names)
    while queue:
        name = re.sub(r"[-_.]+", "-", queue.pop()).lower()
        if name in found:
            continue
        try:
            found[name] = dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise OfflineVenvError(f"{name} is not installed here, so it cannot be installed offline") from None
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                queue.append(requirement.name)
    return list(found.values())


def wheel_of(dist: metadata.Distribution, folder: Path) -> Path:
    """A wheel of an installed distribution: its files below site-packages (scripts left out)."""
    info = Path(str(dist._path))  # the .dist-info folder
    tags = [line.split(":", 1)[1].strip() for line in (info / "WHEEL").read_text().splitlines()
            if line.startswith("Tag:")]
    if not tags:
        raise OfflineVenvError(f"{info} records no wheel tag")
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    parts = [list(dict.fromkeys(tag.split("-")[i] for tag in tags)) for i in range(3)]  # py2-none-any, py3-none-any
    path = folder / f"{name}-{dist.version}-{'-'.join('.'.join(p) for p in parts)}.whl"  # -> py2.py3-none-any
    site = info.parent
    files = [f for f in dist.files or [] if not str(f).startswith("..") and "__pycache__" not in str(f)
             and not (Path(str(f)).parent.name == info.name and Path(str(f)).name in SKIPPED_METADATA)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as wheel:
        for file in files:
            if (site / file).is_file():
                wheel.write(site / file, str(file))
        wheel.writestr(f"{info.name}/RECORD", "".join(f"{f},,\n" for f in files) + f"{info.name}/RECORD,,\n")
    return path


def build(root: Path, packages: list[str]) -> Path:
    """A venv at `root` with `packages` installed offline; returns its python. OfflineVenvError when it
    cannot be built here."""
    wheelhouse = root.parent / f"{root.name}-wheels"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    for dist in requirement_closure(packages):
        wheel_of(dist, wheelhouse)
    made = subprocess.run([sys.executable, "-m", "venv", str(root)], capture_output=True, text=True)
    python = root / "bin" / "python"
    if made.returncode != 0 or not python.is_file():
        raise OfflineVenvError(f"python -m venv failed: {(made.stderr or made.stdout).strip()[-300:]}")
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-cache-dir",
                                "--find-links", str(wheelhouse), *packages], capture_output=True, text=True)
    if installed.returncode != 0:
        raise OfflineVenvError(f"pip install --no-index failed: {(installed.stderr or installed.stdout).strip()[-300:]}")
    return python
