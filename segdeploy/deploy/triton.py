"""A Triton Inference Server model repository for deployed variants: `<name>/config.pbtxt` and
`<name>/1/model.onnx` (ONNX Runtime or OpenVINO backend) or `<name>/1/model.plan` (TensorRT).

The config is a ModelConfig protobuf (tritonclient's model_config_pb2, the `triton` extra) written with
protobuf's text format: max_batch_size is the largest batch bench measured, dynamic batching prefers the
batch with the best measured throughput, and input/output names, types and dims (batch excluded) are the
graph's. No server was run here: the configs are checked by parsing them back.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from segdeploy.core import fileio
from segdeploy.core.errors import BackendUnavailable
from segdeploy.core.rundir import RunDir
from segdeploy.deploy.graph_io import onnx_source, read_io
from segdeploy.deploy.measured import copy_measured
from segdeploy.deploy.pick import Candidate, Decision
from segdeploy.deploy.targets import TARGETS
from segdeploy.runtime.variants import parse_variant

TRITON_TYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "int8": "TYPE_INT8",
                "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "float16": "TYPE_FP16",
                "float32": "TYPE_FP32", "float64": "TYPE_FP64"}


def model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise BackendUnavailable("--triton needs tritonclient's ModelConfig protobuf: "
                                 "pip install 'segdeploy[triton]'") from None
    return model_config_pb2


def model_name(run: RunDir, c: Candidate) -> str:
    cfg = run.load_config().model
    return re.sub(r"[^A-Za-z0-9_-]+", "_", f"{cfg.name}-{cfg.encoder}-{c.variant}-{c.precision}")


def batch_limits(decision: Decision, c: Candidate) -> tuple[int, int]:
    """(largest measured batch, batch with the best measured throughput) of the candidate's variant."""
    cells = [x for x in decision.candidates if x.key == c.key and x.status == "ok" and x.batch_size]
    largest = max((x.batch_size for x in cells), default=c.batch_size or 1)
    best = max(cells, key=lambda x: x.throughput_ips or 0.0).batch_size if cells else largest
    return largest, best


def _tensor(pb2, entry: dict[str, Any], batched: bool, kind):
    dims = entry["shape"][1:] if batched else entry["shape"]
    return kind(name=entry["name"], data_type=pb2.DataType.Value(TRITON_TYPES[entry["dtype"]]),
                dims=[d if isinstance(d, int) and d > 0 else -1 for d in dims])


def model_config(run: RunDir, decision: Decision, c: Candidate, name: str, threads: int | None):
    """The ModelConfig of one candidate."""
    pb2 = model_config_pb2()
    target = TARGETS[c.backend]
    variant = parse_variant(c.variant, c.graph or c.precision)
    io = read_io(onnx_source(run, variant))
    batched = all(not isinstance(e["shape"][0], int) for e in io["inputs"] + io["outputs"])
    largest, preferred = batch_limits(decision, c)
    config = pb2.ModelConfig(name=name, max_batch_size=largest if batched else 0, **target.triton_fields)
    config.input.extend(_tensor(pb2, e, batched, pb2.ModelInput) for e in io["inputs"])
    config.output.extend(_tensor(pb2, e, batched, pb2.ModelOutput) for e in io["outputs"])
    if batched:
        config.dynamic_batching.preferred_batch_size.append(preferred)
    gpu = str(c.bench_row.get("device", "cpu")).startswith("cuda")
    kind = pb2.ModelInstanceGroup.KIND_GPU if gpu else pb2.ModelInstanceGroup.KIND_CPU
    config.instance_group.append(pb2.ModelInstanceGroup(kind=kind, count=1))
    for key, value in target.triton_parameters(target.settings(variant, None if gpu else threads)).items():
        config.parameters[key].string_value = value
    return config


def write_repository(run: RunDir, decision: Decision, chosen: list[Candidate], root: Path,
                     threads: int | None) -> list[dict[str, Any]]:
    """One model folder per candidate under `root` (its graph or engine: the file that was measured);
    returns what was written."""
    from google.protobuf import text_format


    written = []
    for c in chosen:
        name = model_name(run, c)
        config = model_config(run, decision, c, name, threads)
        folder = root / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        model_file = folder / "1" / TARGETS[c.backend].triton_model_file
        copy_measured(run, c, model_file)
        fileio.write_text(folder / "config.pbtxt", text_format.MessageToString(config))
        written.append({"name": name, "variant": c.variant, "precision": c.precision,
                        "max_batch_size": config.max_batch_size,
                        "preferred_batch_size": list(config.dynamic_batching.preferred_batch_size),
                        "model_sha256": fileio.sha256_file(model_file)})
    return written
