"""Class maps for folder datasets: class names, a palette, stored ids and void values from classes.json.

    {"classes": [{"name": "background", "color": [0, 0, 0]},
                 {"name": "road", "color": [128, 64, 128], "id": 7}],
     "void": {"ids": [255], "colors": [[255, 255, 255]]}}

`classes` may also be a plain list of names. A class's `id` is the value stored in index masks (default:
its position); `color` is its colour in figures and, for RGB colour-coded masks, the colour that encodes
it. Index masks (mode L, P or I) are read through the ids, RGB masks through the palette; a value or colour
the map does not list is a one-line error naming the file and the value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segdeploy.core.errors import ConfigError
from segdeploy.core.validate import MAX_CLASSES, MAX_MASK_VALUE
from segdeploy.data.decode import UnknownLabel, mask_levels
from segdeploy.data.preprocess import VOID_LABEL

CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class ClassMap:
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...] | None = None
    ids: tuple[int, ...] = ()  # stored value of each class in index masks
    void_ids: tuple[int, ...] = ()
    void_colors: tuple[tuple[int, int, int], ...] = ()
    source: str = CLASSES_FILE
    reads_void = True  # --void-label is one of its void_ids: MaskDecoder leaves void to it

    @property
    def palette(self) -> np.ndarray | None:
        return None if self.colors is None else np.array(self.colors, np.uint8)

    def key(self) -> str:
        return json.dumps([self.names, self.colors, self.ids, self.void_ids, self.void_colors])

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Mask image -> class indices (255 void)."""
        if image.mode in ("RGB", "RGBA"):
            return self._decode_colors(np.asarray(image.convert("RGB")))
        return self._decode_ids(mask_levels(image))

    def _decode_ids(self, values: np.ndarray) -> np.ndarray:
        table = {int(v): i for i, v in enumerate(self.ids)} | {int(v): VOID_LABEL for v in self.void_ids}
        unique, inverse = np.unique(values, return_inverse=True)
        unknown = [int(v) for v in unique if int(v) not in table]
        if unknown:
            raise UnknownLabel(f"has value {unknown[0]}, which {self.source} does not list "
                               f"(ids: {', '.join(map(str, sorted(table)))})")
        return np.array([table[int(v)] for v in unique], np.uint8)[inverse].reshape(values.shape)

    def _decode_colors(self, rgb: np.ndarray) -> np.ndarray:
        if self.colors is None:
            raise UnknownLabel(f"is an RGB colour mask, but {self.source} gives no colours: add a \"color\" "
                               "to every class")
        codes = _rgb_codes(rgb)
        table = {_code(c): i for i, c in enumerate(self.colors)} | {_code(c): VOID_LABEL for c in self.void_colors}
        unique, inverse = np.unique(codes, return_inverse=True)
        unknown = [int(c) for c in unique if int(c) not in table]
        if unknown:
            y, x = np.argwhere(codes == unknown[0])[0]
            raise UnknownLabel(f"has colour {_rgb(unknown[0])} (at x={x}, y={y}), which is not in the palette of "
                               f"{self.source}")
        return np.array([table[int(c)] for c in unique], np.uint8)[inverse].reshape(codes.shape)


def _rgb_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _code(color) -> int:
    r, g, b = color
    return (int(r) << 16) | (int(g) << 8) | int(b)


def _rgb(code: int) -> tuple[int, int, int]:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def _color(value, where: str) -> tuple[int, int, int]:
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        raise ConfigError(f"{where}: a colour is [r, g, b] with integers 0..255, got {value!r}")
    return tuple(value)


def check_class_count(count: int, path: Path) -> None:
    """A class map's classes become ids 0..count-1 in uint8 masks, where 255 is void."""
    if count > MAX_CLASSES:
        raise ConfigError(f"{path}: lists {count} classes, but at most {MAX_CLASSES} fit (class ids are stored in "
                          f"uint8 masks, {VOID_LABEL} = void)")


def _mask_value(value, where: str) -> int:
    """A stored mask value: an integer 0..65535 (8- or 16-bit masks)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_MASK_VALUE:
        raise ConfigError(f"{where} must be a mask value, an integer 0..{MAX_MASK_VALUE}, got {value!r}")
    return value


def load_class_map(path: str | Path, void_label: int | None = None) -> ClassMap:
    """Read classes.json; `void_label` (--void-label) adds a void id. A malformed file is a one-line error."""
    path = Path(path).expanduser()
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"class map not found: {path}") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ConfigError(f"{path}: not a readable JSON class map ({exc})") from None
    classes = raw.get("classes") if isinstance(raw, dict) else None
    if not isinstance(classes, list) or len(classes) < 2:
        raise ConfigError(f"{path}: needs \"classes\": a list of at least 2 class names or "
                          "{\"name\", \"color\", \"id\"} objects")
    entries = [{"name": c} if isinstance(c, str) else c for c in classes]
    if not all(isinstance(e, dict) and isinstance(e.get("name"), str) and e["name"].strip() for e in entries):
        raise ConfigError(f"{path}: every class needs a \"name\" (not empty)")
    names = [e["name"].strip() for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: two classes share the name {duplicates[0]!r}: per-class results are keyed by "
                          "name, give every class its own")
    colored = [e for e in entries if "color" in e]
    if colored and len(colored) != len(entries):
        raise ConfigError(f"{path}: give a \"color\" to every class or to none")
    check_class_count(len(entries), path)
    ids = tuple(_mask_value(e.get("id", i), f"{path}: class {e['name']!r} id") for i, e in enumerate(entries))
    void = raw.get("void", {})
    if not isinstance(void, dict):
        raise ConfigError(f"{path}: \"void\" is {{\"ids\": [...], \"colors\": [[r, g, b], ...]}}, got {void!r}")
    void_ids = tuple(_mask_value(v, f"{path}: void id") for v in void.get("ids", [])) + (() if void_label is None else (void_label,))
    if len(set(ids)) != len(ids) or set(ids) & set(void_ids):
        raise ConfigError(f"{path}: class ids must be distinct and not void: {list(ids)}, void {list(void_ids)}")
    colors = tuple(_color(e["color"], f"{path}: class {e['name']!r}") for e in entries) if colored else None
    void_colors = tuple(_color(c, f"{path}: void colour") for c in void.get("colors", []))
    if colors and len(set(colors + void_colors)) != len(colors) + len(void_colors):
        raise ConfigError(f"{path}: two classes (or a class and void) share a colour")
    return ClassMap(tuple(names), colors, ids, void_ids, void_colors, source=str(path))


def find_class_map(root: Path, classes: str | None, void_label: int | None) -> ClassMap | None:
    """--classes FILE, else ROOT/classes.json when it exists, else None."""
    if classes:
        return load_class_map(classes, void_label)
    if (root / CLASSES_FILE).is_file():
        return load_class_map(root / CLASSES_FILE, void_label)
    return None
