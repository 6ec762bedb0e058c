"""Precision graphs: FP16 conversion with FP32 islands, INT8 Q/DQ calibration, parity on ONNX Runtime CPU."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from typer.testing import CliRunner

from segdeploy.core import env, fileio
from segdeploy.core.config import ExportConfig
from segdeploy.cli import app
from segdeploy.core.rundir import RunDir
from segdeploy.core.errors import ConfigError
from segdeploy.core.config import ParityConfig
from segdeploy.evaluation.parity import DEFAULT_TOLERANCES, run_parity
from segdeploy.export.precision import CalibrationReader, calibration_images, convert_fp16


class ConvLayerNormSoftmax(torch.nn.Module):
    """Conv -> LayerNorm over channels -> Softmax: the ops the FP16 graph must keep in FP32."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.LayerNorm(8)
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv(x).permute(0, 2, 3, 1)
        y = self.norm(y).permute(0, 3, 1, 2)
        return torch.softmax(self.head(y), dim=1)


@pytest.fixture(scope="module")
def layernorm_graph(tmp_path_factory):
    torch.manual_seed(0)
    model = ConvLayerNormSoftmax().eval()
    path = tmp_path_factory.mktemp("graphs") / "ln.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(path), input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return model, path


def _producers(graph):
    return {out: node for node in graph.node for out in node.output}


def test_fp16_graph_has_fp16_weights_and_fp32_layernorm_softmax(layernorm_graph, tmp_path):
    model, src = layernorm_graph
    dst = tmp_path / "ln.fp16.onnx"
    details = convert_fp16(src, dst)
    graph = onnx.load(str(dst)).graph
    onnx.checker.check_model(str(dst), full_check=True)
    ops = {node.op_type for node in graph.node}
    assert {"LayerNormalization", "Softmax", "Conv"} <= ops
    initializers = {init.name: init for init in graph.initializer}
    producers = _producers(graph)
    for node in graph.node:
        if node.op_type == "Conv":
            assert initializers[node.input[1]].data_type == TensorProto.FLOAT16
        if node.op_type in ("LayerNormalization", "Softmax"):
            # FP32 islands: the activation arrives through a Cast to FLOAT, parameters stay FLOAT
            cast = producers[node.input[0]]
            assert cast.op_type == "Cast"
            assert next(a.i for a in cast.attribute if a.name == "to") == TensorProto.FLOAT
            for name in node.input[1:]:
                if name in initializers:
                    assert initializers[name].data_type == TensorProto.FLOAT
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert "LayerNormalization" in details["keep_fp32_ops"] and details["io_fp16"] is False

    import onnxruntime as ort

    x = torch.randn(2, 3, 16, 16)
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    assert got.dtype == np.float32
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() < 5e-3


def test_fp16_io_option_makes_input_and_output_fp16(layernorm_graph, tmp_path):
    _, src = layernorm_graph
    dst = tmp_path / "ln.fp16io.onnx"
    convert_fp16(src, dst, io_fp16=True)
    graph = onnx.load(str(dst)).graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16


@pytest.fixture(scope="module")
def precision_run(trained_run, tmp_path_factory):
    """A private copy of the tiny trained run, exported at all three precisions (4 calibration images); the
    INT8 graph is ONNX Runtime's, placed for TensorRT (NNCF's CPU graph: tests/test_int8.py)."""
    from segdeploy.export.onnx import export_graphs

    path = tmp_path_factory.mktemp("precision") / "run"
    shutil.copytree(trained_run.path, path)
    run = RunDir.open(path)
    paths = export_graphs(run, ExportConfig(precisions=["fp32", "fp16", "int8"], calib_images=4,
                                            int8_quantizer="ort"))
    return run, paths


def test_export_writes_one_graph_and_sidecar_per_precision(precision_run):
    run, paths = precision_run
    assert set(paths) == {"fp32", "fp16", "int8"}
    fp32_sidecar = fileio.read_json(run.onnx_sidecar("fp32"))
    assert fp32_sidecar["simplify"]["simplified"] is True
    assert fp32_sidecar["simplify"]["nodes_after"] <= fp32_sidecar["simplify"]["nodes_before"]  # dynamo graphs leave it little
    for precision, path in paths.items():
        assert path == run.onnx_path(precision) and path.is_file()
        sidecar = fileio.read_json(run.onnx_sidecar(precision))
        assert sidecar["precision"] == precision
        assert sidecar["sha256"] == fileio.sha256_file(path)
    int8 = fileio.read_json(run.onnx_sidecar("int8"))
    assert int8["source_sha256"] == fp32_sidecar["sha256"]
    assert int8["int8"]["calibration"] == {"method": "minmax", "images": 4, "split": "train", "stride": 4}
    assert int8["int8"]["activation_type"] == "int8" and int8["int8"]["tensorrt_compatible"] is True
    assert int8["int8"]["quantizer"] == "ort" and int8["int8"]["settings"]["reduce_range"] is False
    assert int8["int8"]["calibrated_on"]["cpu_flags"] == env.cpu_flags()


def test_int8_graph_has_per_channel_symmetric_qdq(precision_run):
    _, paths = precision_run
    graph = onnx.load(str(paths["int8"])).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    initializers = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    conv_weights = {node.input[1] for node in graph.node if node.op_type == "Conv"}
    producers = _producers(graph)
    per_channel = 0
    for name in conv_weights:
        dq = producers[name]
        assert dq.op_type == "DequantizeLinear"
        assert initializers[dq.input[0]].dtype == np.int8
        if dq.input[1] in initializers and initializers[dq.input[1]].size > 1:
            per_channel += 1
    assert per_channel == len(conv_weights)
    zero_points = [initializers[n.input[2]] for n in graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in initializers]
    assert zero_points and all(zp.dtype == np.int8 and not zp.any() for zp in zero_points)


def test_int8_graph_for_tensorrt_keeps_biases_fp32(precision_run):
    """TensorRT's ONNX parser refuses DequantizeLinear of INT32 (a quantised bias): none may be left, every
    DequantizeLinear reads INT8, Conv biases are FP32 initializers, and no Q/DQ follows a Conv output."""
    run, paths = precision_run
    graph = onnx.load(str(paths["int8"])).graph
    initializers = {init.name: init.data_type for init in graph.initializer}
    producers = _producers(graph)
    dequantized = [node for node in graph.node if node.op_type == "DequantizeLinear"]
    assert dequantized
    for node in dequantized:
        source = node.input[0]
        if source in initializers:
            assert initializers[source] == TensorProto.INT8, (node.name, initializers[source])
        else:  # an activation: the output of a QuantizeLinear with an INT8 zero point
            quantize = producers[source]
            assert quantize.op_type == "QuantizeLinear" and initializers[quantize.input[2]] == TensorProto.INT8
    biases = [node.input[2] for node in graph.node if node.op_type == "Conv" and len(node.input) > 2]
    assert biases and all(initializers.get(name) == TensorProto.FLOAT for name in biases)
    # outputs of weighted ops are not quantised for themselves: a quantised Conv output feeds an Add (the
    # residual input TensorRT fuses into the Conv), never only a Relu
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    conv_outputs = {node.output[0] for node in graph.node if node.op_type == "Conv"}
    for quantize in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in conv_outputs]:
        (dequantize,) = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == quantize.output[0]]
        assert readers[dequantize.output[0]] == ["Add"], quantize.name
    assert [name for name in conv_outputs if readers.get(name) == ["Relu"]]  # Conv -> Relu, no Q/DQ between
    assert fileio.read_json(run.onnx_sidecar("int8"))["int8"]["quantize_bias"] is False


def test_precision_graphs_parity_against_torch(precision_run):
    run, _ = precision_run
    report = run_parity(run, ParityConfig(["onnxruntime"], ["fp32", "fp16", "int8"], batch_size=8))
    rows = {r["precision"]: r for r in report["results"]}
    assert rows["fp32"]["passed"] and rows["fp16"]["passed"], rows
    assert rows["fp16"]["argmax_agreement"] >= DEFAULT_TOLERANCES["fp16"].min_agreement
    # INT8 on a model trained for one epoch on 16 images: near-tied logits make argmax agreement
    # the noisy quantity; the mIoU tolerance is the one the INT8 default is built around.
    assert abs(rows["int8"]["miou_delta"]) <= DEFAULT_TOLERANCES["int8"].max_miou_delta, rows["int8"]
    assert rows["int8"]["argmax_agreement"] >= 0.85, rows["int8"]
    assert 0 < rows["int8"]["mean_abs_err"] < 0.5


def test_calibration_reader_reads_exactly_n_images_in_strides(trained_run):
    cfg = trained_run.load_config()
    images, ids = calibration_images(cfg, 6)
    assert images.shape == (6, 3, cfg.data.size, cfg.data.size) and images.dtype == np.float32
    assert len(ids) == 6
    seen = []
    reader = CalibrationReader(images, "images", on_read=lambda: seen.append(1))
    for start in range(0, len(reader), 3):  # how ORT consumes it with CalibStridedMinMax=3
        reader.set_range(start, start + 3)
        while (item := reader.get_next()) is not None:
            assert item["images"].shape == (1, 3, cfg.data.size, cfg.data.size)
    assert reader.images_read == 6 and len(seen) == 6


def test_calibration_asks_for_more_images_than_the_split_has(trained_run):
    with pytest.raises(ConfigError, match="--calib-images 500"):
        calibration_images(trained_run.load_config(), 500)


def test_cli_export_rejects_bad_precision_and_calibration_method(trained_run):
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(trained_run.path), "--precision", "fp64"])
    assert result.exit_code == 2 and "unknown precision 'fp64'" in result.output
    result = runner.invoke(app, ["export", str(trained_run.path), "--precision", "int8", "--calib-method", "mse"])
    assert result.exit_code == 2 and "unknown calibration method 'mse'" in result.output
