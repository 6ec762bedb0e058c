"""What every command shares: one-line errors, the run argument, flags over a run's config section."""

from __future__ import annotations

import functools
from pathlib import Path

import typer
from rich.markup import escape

from segdeploy.core.config import Config
from segdeploy.core.errors import WRITE_ERRNOS, SegdeployError, write_error_message
from segdeploy.core.progress import err_console

state = {"debug": False}
DEFAULTS = Config()  # the defaults shown in --help come from the config dataclasses


def handle_errors(func):
    """Turn SegdeployError into one line on stderr and its exit code; --debug shows the traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SegdeployError as exc:
            if state["debug"]:
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            if exc.hint:
                err_console.print(f"hint: {escape(exc.hint)}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            if state["debug"] or exc.errno not in WRITE_ERRNOS:
                raise
            err_console.print(f"[bold red]error:[/] {escape(write_error_message(exc))}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]: files already written are complete "
                              "(continue a training run with `segdeploy train --resume RUN`)")
            raise typer.Exit(130) from None

    return wrapper


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


def open_with(run_dir: Path, section: str, **options):
    """The run and its config, with the command's flags over its [section] (None: keep the run's setting)."""
    from segdeploy.core.config import apply_overrides
    from segdeploy.core.env import resolve_device
    from segdeploy.core.rundir import RunDir

    run = RunDir.open(run_dir)
    cfg = apply_overrides(run.load_config(), {f"{section}.{key}": value for key, value in options.items()})
    settings = getattr(cfg, section)
    if hasattr(settings, "device"):
        settings.device = resolve_device(settings.device)
    return run, cfg
