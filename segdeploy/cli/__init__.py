"""The `segdeploy` command line: train -> eval -> export -> parity -> bench (+ report, study)."""

from __future__ import annotations

import sys

import typer

from segdeploy.cli import deploy, evaluate, study, train
from segdeploy.cli.common import state

app = typer.Typer(
    help="Train, export, check and benchmark semantic-segmentation models (PyTorch -> ONNX -> TensorRT).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors.")):
    state["debug"] = debug


app.command()(train.train)
app.command("eval")(evaluate.eval_)
app.command()(evaluate.report)
app.command()(deploy.export)
app.command()(deploy.parity)
app.command()(deploy.bench)
app.command()(study.study)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
