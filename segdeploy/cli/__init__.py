"""The `segdeploy` command line: train -> eval -> export -> parity -> bench -> deploy (+ report, study)."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from segdeploy.cli import deploy, evaluate, export, measure, models, predict, study, train
from segdeploy.cli.common import set_dataset_cache, state

app = typer.Typer(
    help="Train, export, check and benchmark semantic-segmentation models (PyTorch -> ONNX -> TensorRT).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
          cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Dataset cache folder (default: $SEGDEPLOY_CACHE, else ~/.cache/segdeploy)."),
          no_cache: bool = typer.Option(False, "--no-cache", help="Decode datasets into memory instead of the dataset cache.")):
    state["debug"] = debug
    set_dataset_cache(cache_dir, no_cache)


app.command()(train.train)
app.command("eval")(evaluate.eval_)
app.command()(evaluate.report)
app.command()(export.export)
app.command()(measure.parity)
app.command()(measure.bench)
app.command()(predict.predict)
app.command()(deploy.deploy)
app.command()(study.study)
app.command()(models.models)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
