"""`segdeploy models`: the model families and their encoders, with parameters and GFLOPs at a size."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import typer
from rich.table import Table

from segdeploy.cli.common import DEFAULTS, handle_errors
from segdeploy.core.config import ModelConfig
from segdeploy.core.progress import console
from segdeploy.core.size import parse_size, size_label
from segdeploy.models.registry import MODELS, validate_model_config


def _families_table() -> Table:
    table = Table(title="model families (--model)")
    for column in ("model", "description", "output stride", "encoders"):
        table.add_column(column)
    for name, spec in MODELS.items():
        strides = " or ".join(map(str, spec.output_strides)) or "32 (no choice)"
        table.add_row(name, spec.description, strides, spec.encoder_help)
    return table


@handle_errors
def models(
    model: str = typer.Option(DEFAULTS.model.name, "--model", help=f"Family whose encoders to list: {MODELS.known()}."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="Comma-separated encoders to show (any smp encoder or tu-<timm model>) [default: every listed one]."),
    size: str = typer.Option("256", "--size", help="Input size the GFLOPs are counted at: 256 or HEIGHTxWIDTH."),
    output_stride: int = typer.Option(DEFAULTS.model.output_stride, "--output-stride", help="DeepLab output stride, 8 or 16."),
    decoder_width: float = typer.Option(DEFAULTS.model.decoder_width, "--decoder-width", help="Decoder channels times this (smp families)."),
):
    """List model families, then one family's encoders with parameters and GFLOPs (batch 1) at --size."""
    from segdeploy.models.zoo import family_costs

    console.print(_families_table())
    input_size = parse_size(size)
    cfg = ModelConfig(name=model, output_stride=output_stride, decoder_width=decoder_width)
    chosen = [name.strip() for name in encoder.split(",") if name.strip()] if encoder else None
    for name in chosen or [DEFAULTS.model.encoder]:  # unknown names are refused before anything is built
        validate_model_config(replace(cfg, encoder=name), input_size)
    table = Table(title=f"{model} encoders at {size_label(input_size)} px (counted on torch's meta device)")
    for column, justify in (("encoder", "left"), ("params M", "right"), ("GFLOPs", "right"), ("note", "left")):
        table.add_column(column, justify=justify)
    for cost in family_costs(cfg, input_size, chosen):
        table.add_row(cost.encoder, f"{cost.params / 1e6:.2f}" if cost.params is not None else "-",
                      f"{cost.gflops:.3f}" if cost.gflops is not None else "-", cost.note)
    console.print(table)
