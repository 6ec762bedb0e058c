"""The built-in backends of the runtime registry: torch, onnxruntime, openvino, tensorrt (and their presets).

Each entry says what its modifiers mean, where it runs, which file it runs and why it cannot run here;
the runner classes are imported only when a runner is built, so the CLI starts without the libraries.
"""

from __future__ import annotations

import importlib.util

from segdeploy.core.errors import ConfigError
from segdeploy.core.size import input_hw
from segdeploy.export.sidecar import checked_graph
from segdeploy.runtime.base import Runner
from segdeploy.runtime.variants import BACKENDS, PRESETS, BackendSpec, Modifier, RuntimeContext, Variant

CUDA_GRAPH = Modifier("cuda_graph", help="capture the static-shape step in a CUDA graph and replay it")
# The deploy graph of the precision (export --deploy): uint8 NHWC images in, mask out (export/deploy_graph.py)
DEPLOY = Modifier("deploy", help="the deploy graph (export --deploy): uint8 NHWC images in, class-index mask out")


def _graph_file(variant: Variant, run):
    return run.onnx_path(variant.graph, deploy=bool(variant.option("deploy")))


def _checked(variant: Variant, run):
    """The graph the variant runs, after checking it against its sidecar and the run."""
    return checked_graph(run, variant.graph, deploy=bool(variant.option("deploy")))


def _export_command(variant: Variant) -> str:
    return f"export --precision {variant.graph}{' --deploy' if variant.option('deploy') else ''}"


def _cuda(device: str) -> bool:
    return device.startswith("cuda")


# --------------------------------------------------------------------------- torch


def _torch_unavailable(variant: Variant, device: str) -> str | None:
    if variant.option("autocast") == "fp16" and not _cuda(device):
        return "autocast fp16 needs a CUDA device (use torch+bf16 on a CPU)"
    if variant.option("cuda_graph") and not _cuda(device):
        return "CUDA graphs need a CUDA device"
    if variant.option("tf32") and not _cuda(device):
        return "TF32 exists on CUDA devices only"
    return None


def _torch_check(variant: Variant) -> None:
    if variant.option("compile") and variant.option("cuda_graph"):
        raise ConfigError(f"{variant.name!r}: use compile=reduce-overhead for CUDA graphs with torch.compile, "
                          "not compile together with graph")


def _weights_mb(run) -> float | None:
    from segdeploy.models.checkpoint import weights_mb

    return weights_mb(run)


def _build_torch(variant: Variant, ctx: RuntimeContext) -> Runner:
    import torch

    from segdeploy.models.checkpoint import load_model
    from segdeploy.runtime.torch_runner import TorchRunner

    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    model, cfg, _ = load_model(ctx.run)
    return TorchRunner(model, ctx.device, variant.precision, channels_last=bool(variant.option("channels_last")),
                       compile_mode=variant.option("compile"), tf32=bool(variant.option("tf32")),
                       input_chw=(3, *input_hw(cfg.data.size)))


BACKENDS.register("torch", BackendSpec(
    build=_build_torch, description="PyTorch eager on the run's checkpoint",
    modifiers={"fp16": Modifier("autocast", "fp16", help="fp16 autocast (CUDA)"),
               "bf16": Modifier("autocast", "bf16", help="bf16 autocast"),
               "tf32": Modifier("tf32", help="allow TF32 convolutions (CUDA; fp32 is true FP32 otherwise)"),
               "cl": Modifier("channels_last", help="channels_last memory format"),
               "compile": Modifier("compile", None, default="default", help="torch.compile[=MODE]"),
               "graph": CUDA_GRAPH},
    aliases={"channels_last": "cl"}, reads_graph=False, unavailable=_torch_unavailable,
    precision_of=lambda variant: variant.option("autocast") or ("tf32" if variant.option("tf32") else "fp32"),
    artifact=lambda variant, run: run.checkpoint("best"), made_by=lambda variant: "train", check=_torch_check,
    size_mb=lambda variant, run: _weights_mb(run)))


# --------------------------------------------------------------------------- ONNX Runtime


def _ort_unavailable(variant: Variant, device: str) -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install onnxruntime)"
    provider = variant.option("provider", "cpu")
    if provider == "cpu":
        return None
    from segdeploy.runtime.ort_runner import ORT_PROVIDERS

    if not _cuda(device):
        return f"the {ORT_PROVIDERS[provider]} needs --device cuda"
    import onnxruntime as ort

    if ORT_PROVIDERS[provider] not in ort.get_available_providers():
        return (f"{ORT_PROVIDERS[provider]} not in this onnxruntime build "
                f"(has {', '.join(ort.get_available_providers())}; pip install 'segdeploy[gpu]')")
    return None


def _build_onnxruntime(variant: Variant, ctx: RuntimeContext) -> Runner:
    from segdeploy.runtime.ort_runner import OnnxRuntimeRunner, OrtIOBindingRunner

    path = _checked(variant, ctx.run)
    provider = variant.option("provider", "cpu")
    if provider == "cpu":
        return OnnxRuntimeRunner(path, variant.precision, threads=ctx.threads)
    return OrtIOBindingRunner(path, provider, variant.precision, ctx.device, ctx.threads)


BACKENDS.register("onnxruntime", BackendSpec(
    build=_build_onnxruntime, description="ONNX Runtime on the exported graph (CPU provider by default)",
    modifiers={"cuda": Modifier("provider", "cuda", help="CUDA execution provider, IOBinding on torch buffers"),
               "trt": Modifier("provider", "trt", help="TensorRT execution provider"), "deploy": DEPLOY},
    unavailable=_ort_unavailable, verify=_checked, artifact=_graph_file, made_by=_export_command,
    device_of=lambda variant, device: device if variant.option("provider", "cpu") != "cpu" else "cpu"))


# --------------------------------------------------------------------------- OpenVINO


def _openvino_unavailable(variant: Variant, device: str) -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed: pip install 'segdeploy[openvino]'"
    if variant.option("inference_precision") == "bf16":
        if variant.graph == "fp16":  # would round the FP16 weights again to BF16: nobody deploys that
            return "bf16 inference runs the fp32 graph (--precision fp32) or the int8 graph, not the fp16 one"
        from segdeploy.core.env import openvino_capabilities

        capabilities = openvino_capabilities() or ()
        if "BF16" not in capabilities:
            return (f"this CPU has no BF16 arithmetic for OpenVINO (OPTIMIZATION_CAPABILITIES: "
                    f"{', '.join(capabilities) or 'none'}; needs AVX512_BF16 or AMX)")
    return None


def _openvino_precision(variant: Variant) -> str:
    """bf16 inference on a float graph computes in bf16; an INT8 graph stays int8 (its float rest in bf16)."""
    if variant.option("inference_precision") == "bf16" and variant.graph != "int8":
        return "bf16"
    return variant.graph or "fp32"


def _build_openvino(variant: Variant, ctx: RuntimeContext) -> Runner:
    from segdeploy.runtime.openvino_runner import OpenVinoRunner

    path = _checked(variant, ctx.run)  # the graph its sidecar describes, from this run's checkpoint
    return OpenVinoRunner(path, variant.precision, variant.option("inference_precision", "f32"),
                          variant.option("hint", "latency"), ctx.threads, ctx.run.compile_cache("openvino"))


BACKENDS.register("openvino", BackendSpec(
    build=_build_openvino, description="OpenVINO CPU on the exported graph (FP32 inference unless +bf16)",
    modifiers={"bf16": Modifier("inference_precision", "bf16", help="INFERENCE_PRECISION_HINT=bf16 (AVX512_BF16/AMX)"),
               "throughput": Modifier("hint", "throughput", help="THROUGHPUT hint: the batch over an async infer queue"),
               "deploy": DEPLOY},
    aliases={"tput": "throughput"}, unavailable=_openvino_unavailable, precision_of=_openvino_precision,
    verify=_checked, artifact=_graph_file, made_by=_export_command, device_of=lambda variant, device: "cpu"))


# --------------------------------------------------------------------------- TensorRT


def _trt_unavailable(variant: Variant, device: str) -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        import torch

        from segdeploy.engines.tensorrt import install_hint

        return f"TensorRT is not installed: {install_hint(torch.version.cuda)}"
    if not _cuda(device):
        return "TensorRT needs a CUDA device (--device cuda)"
    if variant.option("deploy"):
        from importlib.metadata import PackageNotFoundError, version

        from segdeploy.engines.tensorrt import deploy_unavailable

        try:
            return deploy_unavailable(version("tensorrt"))
        except PackageNotFoundError:  # a TensorRT without package metadata (a wheel of another name)
            return None
    return None


def _build_tensorrt(variant: Variant, ctx: RuntimeContext) -> Runner:
    from segdeploy.runtime.tensorrt_runner import load_tensorrt

    return load_tensorrt(ctx.run, variant.graph, ctx.device, deploy=bool(variant.option("deploy")))


def _engine_file(variant: Variant, run):
    from segdeploy.engines.tensorrt import engine_path

    return engine_path(run, variant.graph, deploy=bool(variant.option("deploy")))


BACKENDS.register("tensorrt", BackendSpec(
    build=_build_tensorrt, description="TensorRT engine built from the exported graph (`export --trt`)",
    modifiers={"graph": CUDA_GRAPH, "deploy": DEPLOY}, unavailable=_trt_unavailable, artifact=_engine_file,
    made_by=lambda variant: f"export --trt --precision {variant.graph}{' --deploy' if variant.option('deploy') else ''}"))


# --------------------------------------------------------------------------- presets

PRESETS["torch-all"] = {
    "cpu": ["torch", "torch+cl", "torch+bf16", "torch+bf16+cl"],
    "cuda": ["torch", "torch+cl", "torch+fp16", "torch+bf16", "torch+fp16+cl", "torch+bf16+cl", "torch+graph",
             "torch+fp16+cl+graph", "torch+compile", "torch+fp16+cl+compile=max-autotune-no-cudagraphs",
             "torch+fp16+cl+compile=reduce-overhead"]}
PRESETS["ort-all"] = {"cpu": ["onnxruntime"], "cuda": ["onnxruntime+cuda", "onnxruntime+trt"]}
PRESETS["ov-all"] = {"cpu": ["openvino", "openvino+bf16", "openvino+throughput", "openvino+bf16+throughput"],
                    "cuda": []}
PRESETS["trt-all"] = {"cpu": [], "cuda": ["tensorrt", "tensorrt+graph"]}
PRESETS["all"] = {device: [name for preset in ("torch-all", "ort-all", "ov-all", "trt-all") for name in PRESETS[preset][device]]
                  for device in ("cpu", "cuda")}
