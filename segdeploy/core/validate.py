"""The one validation layer: the range of every numeric setting and the kind of every path setting.

`config_from_dict` checks each value it sets against RULES, so a value from a TOML file, a study file or a
command-line flag (CLI flags become config overrides) meets the same rule and the same message; a Config
built in Python is checked as a whole by `validate_config`. Paths are checked where a command uses them
(`check_path`, `check_paths`): the run's own config.toml may name a data root that has moved since.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segdeploy.core.errors import ConfigError, SegdeployError

SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit


@dataclass(frozen=True)
class Rule:
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False
    choices: tuple = ()  # the only values allowed (numbers), or the only words a str value may be
    kind: str | None = None  # "file" or "folder": a path setting (checked by check_path)
    not_paths: tuple[str, ...] = ()  # words a path setting takes that are not paths ("none", "imagenet")
    label: str = ""  # what messages call the path (default: the dotted key)
    why: str = ""  # the reason for the limit, added to the message in parentheses


def at_least(low: int) -> Rule:
    return Rule(low=low)


POSITIVE = Rule(low=0, low_open=True)
NON_NEGATIVE = Rule(low=0)
FRACTION = Rule(low=0, high=1)
SEED = Rule(low=0, high=SEED_MAX)
# Masks and predicted label maps are uint8 with 255 as void, so class ids are 0..254; a segmentation needs 2.
MAX_CLASSES = 255
MAX_MASK_VALUE = 65535  # masks are stored with 8 or 16 bits
CLASS_COUNT = Rule(low=2, high=MAX_CLASSES, why="class ids are stored in uint8 masks, 255 = void; at least 2 classes")

RULES: dict[str, Rule] = {
    "model.output_stride": Rule(choices=(8, 16)),
    "model.num_classes": CLASS_COUNT,
    "model.decoder_width": Rule(low=0, high=4, low_open=True),
    "model.encoder_weights": Rule(kind="file", not_paths=("none", "imagenet"), label="encoder weights"),
    "data.root": Rule(kind="folder", label="data root"),
    "data.size": at_least(1),
    "data.max_images": at_least(1),
    "data.num_classes": CLASS_COUNT,
    "data.void_label": Rule(low=0, high=MAX_MASK_VALUE),  # a stored mask value (8- or 16-bit masks)
    "data.val_fraction": Rule(low=0, high=1, low_open=True, high_open=True),
    "data.split_seed": SEED,
    "data.workers": at_least(0),
    "data.synthetic_images": at_least(2),
    "data.max_megapixels": POSITIVE,
    "train.epochs": at_least(1),
    "train.batch_size": at_least(1),
    "train.lr": POSITIVE,
    "train.weight_decay": NON_NEGATIVE,
    "train.label_smoothing": Rule(low=0, high=1, high_open=True),
    "train.ema_decay": Rule(low=0, high=1, high_open=True),
    "train.seed": SEED,
    "train.max_steps": at_least(1),
    "train.time_hours": POSITIVE,
    "train.threads": at_least(1),
    "train.feature_cache_mb": at_least(0),
    "export.opset": at_least(7),
    "export.calib_images": at_least(1),
    "export.max_miou_drop": Rule(low=0, high=100, low_open=True),  # mIoU points
    "eval.max_images": at_least(1),
    "eval.top_k": at_least(0),
    "eval.batch_size": at_least(1),
    "eval.threads": at_least(1),
    "predict.batch_size": at_least(1),
    "predict.threads": at_least(1),
    "predict.workers": at_least(1),
    "predict.max_megapixels": POSITIVE,
    "eval.data_root": Rule(kind="folder", label="data root"),
    "parity.max_images": at_least(1),
    "parity.batch_size": at_least(1),
    "parity.threads": at_least(1),
    "parity.min_agreement": FRACTION,
    "parity.max_miou_delta": FRACTION,
    "parity.atol": NON_NEGATIVE,
    "bench.batch_sizes": Rule(low=1, choices=("auto",)),
    "bench.auto_max_batch": at_least(1),
    "bench.warmup": at_least(0),
    "bench.warmup_window": at_least(1),
    "bench.warmup_rtol": POSITIVE,
    "bench.max_warmup": at_least(0),
    "bench.iters": at_least(1),
    "bench.min_iters": at_least(1),
    "bench.rel_ci": Rule(low=0, high=1, low_open=True),
    "bench.max_time_s": POSITIVE,
    "bench.threads": at_least(1),
    "bench.cell_timeout_s": POSITIVE,
    "bench.seed": SEED,
    "bench.max_images": at_least(1),
    "bench.plugins": Rule(kind="file", label="backend plugin"),
    "deploy.batch": at_least(1),
    "deploy.max_miou_drop": Rule(low=0, high=100),  # mIoU points
    "deploy.min_agreement": FRACTION,
    # TensorRT engine settings (the [engine] section of issue #12; unused keys cost nothing)
    "engine.min_batch": at_least(1),
    "engine.opt_batches": at_least(1),
    "engine.max_batch": at_least(1),
    "engine.workspace_gb": POSITIVE,
    "engine.optimization_level": Rule(low=0, high=5),
}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _describe(rule: Rule) -> str:
    if rule.low is not None and rule.high is not None:
        left, right = "(" if rule.low_open else "[", ")" if rule.high_open else "]"
        return f"in {left}{_number(rule.low)}, {_number(rule.high)}{right}"
    if rule.low is not None:
        if rule.low == 0 and rule.low_open:
            return "a positive number"
        return f"{'greater than' if rule.low_open else 'at least'} {_number(rule.low)}"
    return f"at most {_number(rule.high)}"


def _check_number(key: str, value: float, rule: Rule) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    numeric_choices = [c for c in rule.choices if not isinstance(c, str)]
    if numeric_choices and value not in numeric_choices:
        raise ConfigError(f"{key} must be {' or '.join(map(str, numeric_choices))}, got {value}")
    too_low = rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low)
    too_high = rule.high is not None and (value >= rule.high if rule.high_open else value > rule.high)
    if too_low or too_high:
        raise ConfigError(f"{key} must be {_describe(rule)}{f' ({rule.why})' if rule.why else ''}, got {value}")


def check_value(key: str, value: Any) -> Any:
    """`value` for the dotted setting `key`, or a one-line ConfigError that names the key and the range."""
    rule = RULES.get(key)
    if rule is None or value is None or rule.kind:
        return value
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, bool):
            continue
        if isinstance(item, (int, float)):
            _check_number(key, item, rule)
        elif isinstance(item, str) and rule.choices and item not in rule.choices:
            words = [c for c in rule.choices if isinstance(c, str)]
            raise ConfigError(f"{key} must be numbers {_describe(rule)} or {' or '.join(map(repr, words))}, "
                              f"got {item!r}")
    return value


def validate_section(section: str, settings: Any) -> None:
    """Every field of one config section (a dataclass) against its rule."""
    for field in dataclasses.fields(settings):
        check_value(f"{section}.{field.name}", getattr(settings, field.name))


def validate_config(cfg: Any, sections: tuple[str, ...] | None = None) -> None:
    """A whole Config (e.g. one built in Python, which no TOML or flag went through)."""
    for field in dataclasses.fields(cfg):
        if field.name != "name" and (sections is None or field.name in sections):
            validate_section(field.name, getattr(cfg, field.name))


def check_path(path: str | Path, kind: str, what: str, must_exist: bool = True,
               error: type[SegdeployError] = ConfigError) -> Path:
    """`path` is a `kind` ("file" or "folder"), or does not exist yet when `must_exist` is False.

    The messages name what the path is for: 'data root not found: PATH', '--config PATH is a folder, not a file'.
    """
    path = Path(path).expanduser()
    if not path.exists():
        if must_exist:
            raise error(f"{what} not found: {path}")
        return path
    if kind == "folder" and not path.is_dir():
        raise error(f"{what} {path} is a file, not a folder")
    if kind == "file" and not path.is_file():
        raise error(f"{what} {path} is a {'folder' if path.is_dir() else 'special file'}, not a file")
    return path


def check_paths(section: str, settings: Any, names: tuple[str, ...]) -> None:
    """The path settings `names` of one config section exist and are of their kind; None means unset."""
    for name in names:
        rule = RULES[f"{section}.{name}"]
        value = getattr(settings, name)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item not in rule.not_paths:
                check_path(item, rule.kind, rule.label or f"{section}.{name}")
