"""What every command shares: one-line errors, the run argument, flags over a run's config section."""

from __future__ import annotations

import contextlib
import functools
import inspect
import shlex
import time
from pathlib import Path

import typer
from rich.markup import escape

from segdeploy.core.config import Config
from segdeploy.core.errors import (WRITE_ERRNOS, ConfigError, SegdeployError, first_line, is_out_of_memory,
                                   write_error_message)
from segdeploy.core.progress import err_console

state = {"debug": False, "run_dir": None}  # run_dir: the run `train` is writing (for the Ctrl-C hint)
DEFAULTS = Config()  # the defaults shown in --help come from the config dataclasses


def handle_errors(func):
    """Turn SegdeployError into one line on stderr and its exit code; --debug shows the traceback. Resources
    a command takes (its run directory's lock) are released when it ends, however it ends."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        state.update(run_dir=None, resume=False, started=time.time(), command=given_command(func, kwargs))
        try:
            with contextlib.ExitStack() as resources:
                state["resources"] = resources
                return func(*args, **kwargs)
        except SegdeployError as exc:
            if state["debug"]:
                raise
            _error(str(exc), exc.hint)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            if state["debug"] or exc.errno not in WRITE_ERRNOS:
                raise
            _error(write_error_message(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print(f"[bold red]interrupted[/]: files already written are complete; "
                              f"{escape(interrupted_hint())}", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - only allocation failures are turned into one line
            if state["debug"] or not is_out_of_memory(exc):
                raise
            name = command_name(func)
            _error(f"out of memory in `segdeploy {name}` ({first_line(exc)[:160]})",
                   OOM_SETTINGS.get(name, "free memory, or run it on a machine with more"))
            raise typer.Exit(2) from None

    return wrapper


# What to lower when a command runs out of memory (train raises its own message with the values).
OOM_SETTINGS = {"eval": "lower --batch-size", "parity": "lower --batch-size", "bench": "lower --batch-sizes",
                "train": "lower --batch-size or --size"}


def _error(message: str, hint: str | None = None) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"hint: {escape(hint)}", highlight=False, soft_wrap=True)


def command_name(func) -> str:
    return func.__name__.rstrip("_")  # eval_ is `segdeploy eval`


def given_command(func, kwargs: dict) -> str:
    """The command being run as it can be typed again: its arguments and every option not at its default."""
    from typer.models import ArgumentInfo, OptionInfo

    words = ["segdeploy", command_name(func)]
    for name, param in inspect.signature(func).parameters.items():
        info, value = param.default, kwargs.get(name)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(info, ArgumentInfo):
            words += [str(v) for v in values]
        if not isinstance(info, OptionInfo) or value is None or value == info.default:
            continue
        flag = next((d for d in info.param_decls if d.startswith("--")), f"--{name.replace('_', '-')}")
        if isinstance(value, bool):
            on, _, off = flag.partition("/")
            words.append(on if value else off or on)
            continue
        for item in values:
            words += [flag, str(item)]
    return shlex.join(words)


def interrupted_hint() -> str:
    """A training run is continued with --resume; every other command is simply run again (what it writes
    changes as one unit, so the interrupted attempt left the earlier result as it was)."""
    run_dir = state.get("run_dir")
    config = Path(run_dir or "") / "config.toml"
    # this command's run: written by this command, or the one --resume continues
    if run_dir is not None and config.is_file() and (state.get("resume") or config.stat().st_mtime >= state["started"]):
        return f"continue the training with `{shlex.join(['segdeploy', 'train', '--resume', str(run_dir)])}`"
    return f"run it again with `{state['command']}`"


def set_dataset_cache(cache_dir: str | None, no_cache: bool) -> None:
    """--cache-dir / --no-cache, through the environment so that subprocesses (bench cells) follow them."""
    import os

    from segdeploy.data.cache import ENV_DIR, ENV_OFF

    if cache_dir:
        os.environ[ENV_DIR] = cache_dir
    if no_cache:
        os.environ[ENV_OFF] = "1"


RunArg = typer.Argument(..., help="Run directory written by `segdeploy train`.", show_default=False)


def as_list(text: str | None) -> list[str] | None:
    from segdeploy.core.config import parse_list

    return parse_list(text)


def hold_run_lock(path: Path, command: str) -> None:
    """Lock the run directory until the command ends: one writer at a time (core/lock.py)."""
    from segdeploy.core.lock import run_lock

    state["resources"].enter_context(run_lock(path, command))


def open_with(run_dir: Path, section: str, **options):
    """The run and its config, with the command's flags over its [section] (None: keep the run's setting)."""
    from segdeploy.core.config import apply_overrides
    from segdeploy.core.env import resolve_device
    from segdeploy.core.rundir import RunDir

    run = RunDir.open(run_dir)
    hold_run_lock(run.path, section)
    cfg = apply_overrides(run.load_config(), {f"{section}.{key}": value for key, value in options.items()})
    settings = getattr(cfg, section)
    if hasattr(settings, "device"):
        settings.device = resolve_device(settings.device)
    return run, cfg


# --------------------------------------------------------------------------- one spelling per concept

# Spellings kept for one release: old flag -> the flag that replaced it (README: "CLI: one spelling per concept").
DEPRECATED_FLAGS = {"eval --backend": "--backends", "bench --val-images": "--max-images",
                    "bench --max-batch": "--auto-max-batch"}


def renamed(new_flag: str, new_value, old_flag: str, old_value):
    """The value of an option that was renamed: the new spelling's, or the old one's with a one-line
    deprecation note on stderr. Both at once is a usage error."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise ConfigError(f"{old_flag} is the deprecated spelling of {new_flag}: give only {new_flag}")
    err_console.print(f"note: {old_flag} is deprecated and goes in the next release; use {new_flag}",
                      highlight=False, soft_wrap=True)
    return old_value


def batch_sizes(text: str | None, flag: str, allow_auto: bool = False):
    """A batch-size list flag through the one parser (core/config.py parse_batch_sizes)."""
    from segdeploy.core.config import parse_batch_sizes

    return parse_batch_sizes(text, flag, allow_auto)


def load_plugins(paths: list[Path] | None) -> list[str] | None:
    """--plugin FILE.py: import files that register extra backends, so that every command knows them."""
    if not paths:
        return None
    from segdeploy.runtime.variants import load_plugins as load

    load(paths)
    return [str(p) for p in paths]


PluginOption = typer.Option(None, "--plugin", help="Python file that registers extra backends in "
                            "segdeploy.runtime.variants.BACKENDS (repeat for several).")
DeviceOption = typer.Option(None, help="auto (CUDA when torch sees a GPU, else the CPU), cpu, cuda or cuda:N. [default: auto]")


def _modifier_words(spec) -> str:
    return " ".join(f"+{name}" + ("[=VALUE]" if m.value is None else "") for name, m in spec.modifiers.items())


def backends_help() -> str:
    """'torch (+fp16 +bf16 ...), onnxruntime (+cuda +trt), ...; presets torch-all, ...' from the runtime registry."""
    import segdeploy.runtime.backends  # noqa: F401 - registers the built-in backends
    from segdeploy.runtime.variants import BACKENDS, PRESETS

    parts = [f"{name} ({_modifier_words(spec)})" if spec.modifiers else name for name, spec in BACKENDS.items()]
    return f"BACKEND[+MODIFIER...]: {', '.join(parts)}; presets {', '.join(PRESETS)}"


def registry_help(registry) -> str:
    """'name: description; ...' of a registry whose entries have a description."""
    return "; ".join(f"{name}: {entry.description}" for name, entry in registry.items())
