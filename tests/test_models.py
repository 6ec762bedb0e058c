from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

from segdeploy.core.config import ModelConfig
from segdeploy.core.errors import ConfigError, ModelError
from segdeploy.export.onnx import export_onnx
from segdeploy.models.registry import MODELS, build_model

CASES = [
    ("unet", "resnet18", 16, 64),
    ("unet", "resnet50", 16, 64),
    ("deeplabv3", "resnet50", 8, 64),
    ("deeplabv3", "resnet50", 16, 64),
    ("deeplabv3plus", "resnet50", 16, 64),
    ("deeplabv3plus", "resnet101", 8, 64),
]


@pytest.mark.parametrize("name,encoder,stride,size", CASES)
def test_builds_runs_and_exports(name, encoder, stride, size, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, encoder=encoder, output_stride=stride)
    model = build_model(cfg, num_classes=3, size=size).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 3, size, size)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, size)
    graph = onnx.load(str(path)).graph
    assert graph.input[0].name == "images" and graph.output[0].name == "logits"
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 3, size, size)  # a batch size the export never saw
    with torch.no_grad():
        expected = model(x3).numpy()
    got = session.run(None, {"images": x3.numpy()})[0]
    assert got.shape == expected.shape
    assert abs(got - expected).max() < 1e-3


# families with their own test module (optional dependency, slower models)
TESTED_ELSEWHERE = {"sam2": Path(__file__).with_name("test_sam2.py"),
                    "fpn": Path(__file__).with_name("test_model_zoo.py"),
                    "segformer": Path(__file__).with_name("test_model_zoo.py")}


def test_every_registered_model_is_covered():
    assert {c[0] for c in CASES} | set(TESTED_ELSEWHERE) == set(MODELS)
    assert all(path.is_file() for path in TESTED_ELSEWHERE.values())
    for name, spec in MODELS.items():  # every output stride a family offers is exercised
        strides = {c[2] for c in CASES if c[0] == name}
        assert not spec.output_strides or strides == set(spec.output_strides), name


@pytest.mark.parametrize("name,size,message", [
    ("unet", 48, "multiple of 32"),
    ("deeplabv3plus", 40, "multiple of 16"),
])
def test_size_not_divisible(name, size, message):
    with pytest.raises(ConfigError, match=message):
        build_model(ModelConfig(name=name, encoder="resnet18"), 2, size)


def test_deeplab_os8_accepts_multiple_of_8():
    model = build_model(ModelConfig(name="deeplabv3", encoder="resnet18", output_stride=8), 2, 40).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 40)).shape == (1, 2, 40, 40)


def test_unknown_model_and_encoder():
    with pytest.raises(ConfigError, match="unknown model 'pspnet'"):
        build_model(ModelConfig(name="pspnet"), 2, 64)
    with pytest.raises(ConfigError, match="unknown encoder 'vgg17'"):  # vgg16 is one of smp's
        build_model(ModelConfig(encoder="vgg17"), 2, 64)
    with pytest.raises(ConfigError, match="unknown encoder 'tu-no_such_net'"):
        build_model(ModelConfig(encoder="tu-no_such_net"), 2, 64)


def test_encoder_weights_from_file(tmp_path):
    donor = build_model(ModelConfig(), 2, 64)
    path = tmp_path / "encoder.pt"
    torch.save(donor.encoder.state_dict(), path)
    model = build_model(ModelConfig(encoder_weights=str(path)), 2, 64)
    for a, b in zip(donor.encoder.state_dict().values(), model.encoder.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ModelError, match="not found"):
        build_model(ModelConfig(encoder_weights=str(tmp_path / "missing.pt")), 2, 64)
