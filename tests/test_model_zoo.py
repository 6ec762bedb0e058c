"""The contract every (family, encoder) of smp's zoo meets: builds, trains a step, exports FP32 and INT8,
and the FP32 graph passes parity on ONNX Runtime (INT8 runs there too). A sample of encoders runs in the
normal suite; SEGDEPLOY_FULL_ZOO=1 runs every smp encoder with U-Net (slow)."""

from __future__ import annotations

import math
import os

import onnx
import pytest
import torch

from conftest import tiny_config
from segdeploy.core.config import ExportConfig, ModelConfig, ParityConfig
from segdeploy.core.errors import ConfigError
from segdeploy.evaluation.parity import run_parity
from segdeploy.export.onnx import export_onnx, export_run
from segdeploy.models.checkpoint import load_model
from segdeploy.models.registry import MODELS, build_model, validate_model_config
from segdeploy.training.loop import train

SIZE = 32  # the deepest smp encoders reduce 32x: one feature pixel at the bottom


def train_export_and_check(model: str, encoder: str, tmp_path, output_stride: int = 16,
                           decoder_width: float = 1.0) -> dict:
    cfg = tiny_config(data={"size": SIZE, "synthetic_images": 8, "max_images": 2},
                      model={"name": model, "encoder": encoder, "output_stride": output_stride,
                             "decoder_width": decoder_width},
                      train={"batch_size": 2, "max_steps": 1})
    torch.manual_seed(cfg.train.seed)
    fresh = build_model(cfg.model, 4, SIZE).state_dict()
    run = train(cfg, tmp_path / "run")
    trained, _, _ = load_model(run, "last")
    changed = [name for name, value in trained.state_dict().items()
               if value.is_floating_point() and not torch.equal(value, fresh[name])]
    assert changed, "one optimiser step changed no weight"
    export_run(run, ExportConfig(precisions=["fp32", "int8"], calib_images=2))
    ops = {node.op_type for node in onnx.load(str(run.onnx_path("int8"))).graph.node}
    assert "QuantizeLinear" in ops or "QLinearConv" in ops
    report = run_parity(run, ParityConfig(backends=["onnxruntime"], precisions=["fp32", "int8"], max_images=2))
    rows = {row["precision"]: row for row in report["results"]}
    assert rows["fp32"]["passed"], rows["fp32"]
    # INT8 of a one-step model is not judged for accuracy here, only that it runs and is not noise
    assert rows["int8"]["status"] == "ok" and rows["int8"]["argmax_agreement"] > 0.5
    return rows


class ModelContract:
    """Subclasses name a (family, encoder); each inherits the whole contract."""

    model: str
    encoder: str
    decoder_width: float = 1.0

    def test_builds_trains_exports_and_passes_parity(self, tmp_path):
        train_export_and_check(self.model, self.encoder, tmp_path, decoder_width=self.decoder_width)


class TestUnetMobileNetV2(ModelContract):
    model, encoder = "unet", "mobilenet_v2"


class TestDeepLabV3PlusEfficientNetB0(ModelContract):
    # NNCF quantised this graph's depthwise-convolution inputs per channel, which ONNX Runtime refused
    # (QLinearConv: "input zero point must be a scalar or 1D tensor of size 1"); activations are per tensor now.
    model, encoder = "deeplabv3plus", "efficientnet-b0"


class TestFpnTimmMobileNetV3NarrowDecoder(ModelContract):
    model, encoder, decoder_width = "fpn", "tu-mobilenetv3_small_050", 0.5


class TestSegformerResNet18(ModelContract):
    model, encoder = "segformer", "resnet18"


def test_decoder_width_scales_each_family_decoder_keeping_its_multiples():
    from segdeploy.models.registry import decoder_kwargs

    assert decoder_kwargs(MODELS["unet"].decoder_channels, 1.0) == {}
    assert decoder_kwargs(MODELS["unet"].decoder_channels, 0.25) == {"decoder_channels": (64, 32, 16, 8, 4)}
    # FPN's segmentation blocks use GroupNorm(32): their width stays a multiple of 32
    assert decoder_kwargs(MODELS["fpn"].decoder_channels, 0.25) == {
        "decoder_pyramid_channels": 64, "decoder_segmentation_channels": 32}
    narrow = build_model(ModelConfig(name="fpn", encoder="resnet18", decoder_width=0.25), 2, 64)
    wide = build_model(ModelConfig(name="fpn", encoder="resnet18"), 2, 64)
    assert sum(p.numel() for p in narrow.decoder.parameters()) < sum(p.numel() for p in wide.decoder.parameters()) / 8
    with pytest.raises(ConfigError, match="sam2 has no decoder width choice"):
        validate_model_config(ModelConfig(name="sam2", encoder="hiera-t", decoder_width=0.5), 64)


def test_decoder_width_through_the_cli_is_checked_and_listed(tmp_path):
    from typer.testing import CliRunner

    from segdeploy.cli import app

    def cli_run(*args):
        return CliRunner().invoke(app, list(args))

    listed = cli_run("models", "--model", "unet", "--size", "128", "--encoder", "resnet18", "--decoder-width", "0.25")
    assert listed.exit_code == 0, listed.output
    params = float(next(line for line in listed.output.splitlines() if "resnet18" in line).split("│")[2])
    assert 11 < params < 12.5  # the encoder's 11.2 M plus a quarter-width decoder (14.33 M at full width)
    refused = cli_run("train", "--decoder-width", "0", "--max-steps", "1", "--output", str(tmp_path / "r"))
    assert refused.exit_code == 2 and "decoder_width" in refused.output and "Traceback" not in refused.output


def test_encoders_come_from_smp():
    from segmentation_models_pytorch.encoders import get_encoder_names

    for name in ("unet", "deeplabv3", "deeplabv3plus", "fpn", "segformer"):
        assert set(MODELS[name].encoders()) == set(get_encoder_names())


def test_encoder_without_dilation_is_refused_for_deeplab_only():
    cfg = ModelConfig(name="deeplabv3plus", encoder="vgg11")
    with pytest.raises(ConfigError, match="needs output stride 16 by dilation, which encoder vgg11 does not "
                                          "support .*dilated mode"):
        validate_model_config(cfg, SIZE)
    validate_model_config(ModelConfig(name="unet", encoder="vgg11"), SIZE)
    with pytest.raises(ConfigError, match="encoder tu-fastvit_t8 does not support .timm: .*output_stride"):
        validate_model_config(ModelConfig(name="deeplabv3", encoder="tu-fastvit_t8", output_stride=8), SIZE)
    validate_model_config(ModelConfig(name="deeplabv3", encoder="tu-mobilenetv3_small_050"), SIZE)


@pytest.mark.openvino
@pytest.mark.parametrize("model,encoder", [("fpn", "mobilenet_v2"), ("segformer", "mobilenet_v2")])
def test_new_decoders_match_torch_on_openvino(model, encoder, tmp_path):
    import numpy as np
    import openvino as ov

    torch.manual_seed(0)
    network = build_model(ModelConfig(name=model, encoder=encoder), 3, 64).eval()
    path = tmp_path / "m.onnx"
    export_onnx(network, path, 64)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = network(images).numpy()
    # FP32 asked for: OpenVINO runs bf16 by default on CPUs that have it (this one does, others not)
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(images.numpy())[0]
    assert got.shape == expected.shape == (2, 3, 64, 64)
    assert np.abs(got - expected).max() < 1e-3


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SEGDEPLOY_FULL_ZOO") != "1",
                    reason="every smp encoder takes tens of minutes: set SEGDEPLOY_FULL_ZOO=1 to run it")
@pytest.mark.parametrize("encoder", MODELS["unet"].encoders())
def test_full_zoo_with_unet(encoder, tmp_path):
    rows = train_export_and_check("unet", encoder, tmp_path)
    assert math.isfinite(rows["fp32"]["max_abs_err"])


def test_models_command_lists_params_and_gflops():
    from typer.testing import CliRunner

    from segdeploy.cli import app
    from segdeploy.models.registry import count_parameters

    def listed(size: str) -> dict[str, tuple[str, float]]:
        result = CliRunner().invoke(app, ["models", "--model", "fpn", "--encoder", "resnet18,mobilenet_v2",
                                          "--size", size], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        rows = [line.strip("│ ").split("│") for line in result.output.splitlines() if "│" in line]
        return {cells[0].strip(): (cells[1].strip(), float(cells[2])) for cells in rows
                if cells[0].strip() in ("resnet18", "mobilenet_v2")}

    at_64, at_128 = listed("64"), listed("128")
    for encoder in ("resnet18", "mobilenet_v2"):
        params = count_parameters(build_model(ModelConfig(name="fpn", encoder=encoder), 2, 64))
        assert at_64[encoder][0] == at_128[encoder][0] == f"{params / 1e6:.2f}"
        assert at_128[encoder][1] == pytest.approx(4 * at_64[encoder][1], rel=0.02)  # convolutions scale with pixels
    assert at_64["mobilenet_v2"][1] < at_64["resnet18"][1]
    result = CliRunner().invoke(app, ["models", "--model", "deeplabv3", "--encoder", "densenet121"])
    assert result.exit_code == 2 and "does not support" in result.output
