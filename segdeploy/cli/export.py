"""`segdeploy export`: ONNX graphs (and TensorRT engines) of a run's best checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from segdeploy.cli.common import DEFAULTS, RunArg, as_list, handle_errors, open_with
from segdeploy.core.progress import console


def _family_exporters() -> str:
    from segdeploy.models.registry import MODELS

    others = [f"{name}: {spec.exporter}" for name, spec in MODELS.items() if spec.exporter != "dynamo"]
    return "the model family's: dynamo" + (f" ({', '.join(others)})" if others else "")


@handle_errors
def export(
    run_dir: Path = RunArg,
    opset: Optional[int] = typer.Option(None, help=f"ONNX opset. [default: {DEFAULTS.export.opset}]"),
    exporter: Optional[str] = typer.Option(None, help=f"dynamo (torch.export) or torchscript. [default: {_family_exporters()}]"),
    precision: Optional[str] = typer.Option(None, help="Comma-separated graph precisions: fp32, fp16, int8. [default: fp32]"),
    calib_images: Optional[int] = typer.Option(None, "--calib-images", help=f"INT8: training images to calibrate on. [default: {DEFAULTS.export.calib_images}]"),
    calib_method: Optional[str] = typer.Option(None, "--calib-method", help=f"INT8: minmax, entropy or percentile. [default: {DEFAULTS.export.calib_method}]"),
    int8_activations: Optional[str] = typer.Option(None, "--int8-activations", help="INT8: int8 (symmetric, for TensorRT) or uint8 (faster on ONNX Runtime x86 CPUs). [default: int8]"),
    simplify: Optional[bool] = typer.Option(None, "--simplify/--no-simplify", help="onnxslim the FP32 graph (kept only if its logits match). [default: on]"),
    io_fp16: Optional[bool] = typer.Option(None, "--io-fp16/--no-io-fp16", help="FP16: make the graph input/output FP16 too. [default: off]"),
    deploy: bool = typer.Option(False, "--deploy", help="Also write the deployment graph of each precision, "
                                "model[.precision].deploy.onnx: uint8 NHWC RGB images in, class-index mask out."),
    deploy_outputs: Optional[str] = typer.Option(None, "--deploy-outputs", help="Deploy graph outputs: mask, or mask,probs "
                                                 "(adds softmax probabilities float32 NCHW); implies --deploy. [default: mask]"),
    trt: bool = typer.Option(False, "--trt", help="Also build a TensorRT engine per precision -> RUN/engines/."),
    rebuild: bool = typer.Option(False, "--rebuild", help="TensorRT: rebuild engines even if the manifest matches."),
    min_batch: Optional[int] = typer.Option(None, "--min-batch", help=f"TensorRT: smallest batch. [default: {DEFAULTS.engine.min_batch}]"),
    opt_batch: Optional[str] = typer.Option(None, "--opt-batch", help="TensorRT: batch size(s) to tune for, comma-separated: one "
                                            "optimisation profile each (pass bench's --batch-sizes). [default: 1]"),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help=f"TensorRT: largest batch. [default: {DEFAULTS.engine.max_batch}]"),
    workspace_gb: Optional[float] = typer.Option(None, "--workspace-gb", help=f"TensorRT workspace memory limit (GiB). [default: {DEFAULTS.engine.workspace_gb}]"),
    tf32: Optional[bool] = typer.Option(None, "--tf32/--no-tf32", help="TensorRT: let the fp32 engine use TF32 (recorded in "
                                        "the manifest). [default: off: fp32 means FP32]"),
    opt_level: Optional[int] = typer.Option(None, "--opt-level", help="TensorRT builder optimisation level 0-5. [default: TensorRT's, 3]"),
):
    """Export the best checkpoint to RUN/export/model[.fp16|.int8].onnx (dynamic batch) with JSON sidecars;
    with --trt also TensorRT engines RUN/engines/<precision>.plan, built through Polygraphy (settings: the
    engine section of the config)."""
    from segdeploy.core.config import apply_overrides, parse_list
    from segdeploy.export.onnx import export_graphs

    run, cfg = open_with(run_dir, "export", opset=opset, exporter=exporter, precisions=as_list(precision),
                         calib_images=calib_images, calib_method=calib_method, int8_activations=int8_activations,
                         simplify=simplify, io_fp16=io_fp16, deploy_outputs=as_list(deploy_outputs) or (["mask"] if deploy else None))
    cfg = apply_overrides(cfg, {"engine.min_batch": min_batch, "engine.opt_batches": parse_list(opt_batch, int),
                                "engine.max_batch": max_batch, "engine.workspace_gb": workspace_gb,
                                "engine.tf32": tf32, "engine.optimization_level": opt_level})
    from segdeploy.engines.tensorrt import validate

    validate(cfg.engine)  # also without --trt: a wrong value is never silently ignored
    if trt:  # fail before minutes of export and calibration if TensorRT is missing
        from segdeploy.engines.tensorrt import import_tensorrt
        from segdeploy.engines.trt_build import import_polygraphy

        import_tensorrt()
        import_polygraphy()
    for precision, path in export_graphs(run, cfg.export).items():
        console.print(f"[green]exported[/] {path} (+ {path.with_suffix('.json').name})")
        if cfg.export.deploy_outputs:
            deploy_path = run.onnx_path(precision, deploy=True)
            console.print(f"[green]exported[/] {deploy_path} (+ {deploy_path.with_suffix('.json').name})")
    if trt:
        from segdeploy.engines.trt_build import build_engines

        precisions = list(dict.fromkeys(["fp32", *cfg.export.precisions]))
        built_engines = build_engines(run, precisions, cfg.engine, rebuild=rebuild)
        if cfg.export.deploy_outputs:  # the deploy graphs too, where this TensorRT takes uint8 inputs
            from segdeploy.engines.tensorrt import deploy_unavailable, import_tensorrt

            reason = deploy_unavailable(import_tensorrt().__version__)
            if reason:
                console.print(f"[yellow]no deploy-graph engines:[/] {reason}")
            else:
                built_engines |= build_engines(run, precisions, cfg.engine, rebuild=rebuild, deploy=True)
        for name, (engine, built) in built_engines.items():
            console.print(f"[green]{'built' if built else 'up to date'}[/] {engine} ({name})")
