"""The one runtime registry: backend variants such as `torch+bf16+cl`, `onnxruntime+cuda`, `tensorrt+graph`.

Grammar: BACKEND[+MODIFIER[=VALUE]]...; each backend's entry in BACKENDS lists the modifiers it takes.
`eval --backend`, `parity --backends` and `bench --backends` all parse through `parse_variant`, and build
runners through `build_runner`, so every variant a user benchmarks can also be evaluated and checked.
Presets (`torch-all`, `ort-all`, `all`) expand to lists per device. A variant that cannot run here raises
BackendUnavailable, which parity and bench show as a row "unavailable: reason", never a crash.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from segdeploy.core.errors import BackendUnavailable, ConfigError
from segdeploy.core.registry import Registry
from segdeploy.core.validate import check_path
from segdeploy.core.rundir import RunDir
from segdeploy.runtime.base import Runner


@dataclass(frozen=True)
class Modifier:
    key: str  # the option this modifier sets
    value: Any = True  # None: the value comes from `+modifier=VALUE`, else `default`
    default: str | None = None
    help: str = ""


@dataclass(frozen=True)
class Variant:
    backend: str
    modifiers: tuple[str, ...] = ()  # canonical spelling, in the order the backend declares them
    graph: str | None = None  # precision of the exported graph this variant runs; None: the PyTorch model

    @property
    def name(self) -> str:
        return "+".join((self.backend, *self.modifiers))

    def option(self, key: str, default: Any = None) -> Any:
        spec = BACKENDS[self.backend]
        for text in self.modifiers:
            word, _, value = text.partition("=")
            modifier = spec.modifiers[word]
            if modifier.key == key:
                return modifier.value if modifier.value is not None else (value or modifier.default)
        return default

    @property
    def precision(self) -> str:
        """The arithmetic this variant computes in: what tables show and tolerances are chosen by."""
        return BACKENDS[self.backend].precision_of(self)

    @property
    def label(self) -> str:
        return f"{self.name}/{self.precision}" if self.graph in (None, self.precision) else \
            f"{self.name}/{self.precision} ({self.graph} graph)"


REFERENCE = Variant("torch")  # torch FP32 on the checkpoint: what every other variant is compared with


@dataclass
class RuntimeContext:
    """What a runner factory needs: the run, the device asked for, CPU threads."""

    run: RunDir
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        from segdeploy.core.env import cap_threads

        self.threads = cap_threads(self.threads)  # every runner (torch, ONNX Runtime, OpenVINO) gets the capped count


@dataclass(frozen=True)
class BackendSpec:
    build: Callable[[Variant, RuntimeContext], Runner]
    description: str
    modifiers: dict[str, Modifier] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # e.g. channels_last -> cl
    reads_graph: bool = True  # runs an exported ONNX graph: one variant per --precision
    unavailable: Callable[[Variant, str], str | None] = lambda variant, device: None
    precision_of: Callable[[Variant], str] = lambda variant: variant.graph or "fp32"
    device_of: Callable[[Variant, str], str] = lambda variant, device: device
    artifact: Callable[[Variant, RunDir], Path] = lambda variant, run: run.onnx_path(variant.graph or "fp32")
    made_by: Callable[[Variant], str] = lambda variant: f"export --precision {variant.graph}"  # the command
    # MB a deployment carries (default: the artefact's file size)
    size_mb: Callable[[Variant, RunDir], float | None] = lambda variant, run: _file_mb(artifact_path(variant, run))
    check: Callable[[Variant], None] = lambda variant: None  # combinations of modifiers that make no sense
    # The artefact is what its sidecar/manifest recorded (hash, classes, size): raise what differs.
    verify: Callable[[Variant, RunDir], None] = lambda variant, run: None
    # Facts of this backend's runtime for a result's environment block (loaded only when the backend is used)
    environment: Callable[[], dict] = lambda: {}


BACKENDS: Registry[BackendSpec] = Registry("backend")
PRESETS: dict[str, dict[str, list[str]]] = {}


def parse_variant(spec: str, precision: str = "fp32") -> Variant:
    """'torch+fp16+cl+graph' -> Variant; `precision` picks the exported graph for graph backends."""
    backend, *words = [part.strip() for part in spec.strip().split("+")]
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r} in {spec!r} "
                          f"(known: {BACKENDS.known()}; presets: {', '.join(PRESETS)})")
    entry = BACKENDS[backend]
    chosen: dict[str, str] = {}
    for word in words:
        key, eq, value = word.partition("=")
        key = entry.aliases.get(key, key)
        modifier = entry.modifiers.get(key)
        if modifier is None or (eq and modifier.value is not None):
            known = ", ".join(entry.modifiers) or "none"
            raise ConfigError(f"unknown modifier {word!r} for {backend} in {spec!r} (known: {known})")
        if any(entry.modifiers[k].key == modifier.key for k in chosen if k != key):
            raise ConfigError(f"{spec!r} sets {modifier.key} twice")
        chosen[key] = f"{key}={value}" if eq else key
    ordered = tuple(chosen[k] for k in entry.modifiers if k in chosen)
    variant = Variant(backend, ordered, precision if entry.reads_graph else None)
    entry.check(variant)
    return variant


def expand_backends(specs: list[str], device: str, precisions: list[str]) -> list[Variant]:
    """Backend specs (with presets) -> variants; graph backends once per precision; no duplicates."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    variants: list[Variant] = []
    for spec in specs:
        names = PRESETS[spec][kind] if spec in PRESETS else [spec]
        for name in names:
            for precision in precisions:
                variant = parse_variant(name, precision)
                if variant not in variants:
                    variants.append(variant)
    return variants


def parse_backends(specs: list[str], device: str, precisions: list[str]) -> list[Variant]:
    """`expand_backends` for a user's selection: an empty one is a usage error."""
    specs = [s for s in specs if s.strip()]
    if not specs:
        raise ConfigError(f"no backend given (backends: {BACKENDS.known()}; presets: {', '.join(PRESETS)})")
    if not precisions:
        raise ConfigError("no precision given (fp32, fp16, int8)")
    return expand_backends(specs, device, precisions)


def unavailable_reason(variant: Variant, device: str) -> str | None:
    """Why this variant cannot run here, found without loading anything heavy; None if it can."""
    return BACKENDS[variant.backend].unavailable(variant, device)


def runner_device(variant: Variant, device: str) -> str:
    """Where the variant's runner computes (ONNX Runtime's CPU provider: the CPU, whatever --device says)."""
    return BACKENDS[variant.backend].device_of(variant, device)


def artifact_path(variant: Variant, run: RunDir) -> Path:
    """The file the variant runs: the checkpoint, the ONNX graph or the engine."""
    return BACKENDS[variant.backend].artifact(variant, run)


def require_artifacts(variants: list[Variant], run: RunDir, device: str) -> None:
    """A missing or mismatched graph or engine of a variant that could run here is the user's to fix: say how,
    before any work."""
    for variant in variants:
        if unavailable_reason(variant, device) is None:
            run.require(artifact_path(variant, run), BACKENDS[variant.backend].made_by(variant))
            BACKENDS[variant.backend].verify(variant, run)


def _file_mb(path: Path) -> float | None:
    return path.stat().st_size / 2**20 if path.is_file() else None


def deployed_size_mb(variant: Variant, run: RunDir) -> float | None:
    return BACKENDS[variant.backend].size_mb(variant, run)


def build_runner(variant: Variant, ctx: RuntimeContext) -> Runner:
    reason = unavailable_reason(variant, ctx.device)
    if reason:
        raise BackendUnavailable(reason)
    runner = BACKENDS[variant.backend].build(variant, ctx)
    if variant.option("cuda_graph"):
        from segdeploy.runtime.cuda_graph import CudaGraphRunner

        runner = CudaGraphRunner(runner)
    runner.name = variant.name
    return runner


def load_runner(spec: str, run: RunDir, precision: str = "fp32", device: str = "cpu",
                threads: int | None = None) -> Runner:
    """The runner of one variant spec (e.g. 'torch+bf16', 'onnxruntime') for a run."""
    return build_runner(parse_variant(spec, precision), RuntimeContext(run, device, threads))


def load_plugins(paths: list[str | Path]) -> None:
    """Import Python files that register extra backends in BACKENDS (other runtimes, test doubles)."""
    for i, path in enumerate(paths):
        path = check_path(path, "file", "backend plugin")
        spec = importlib.util.spec_from_file_location(f"segdeploy_backend_plugin_{i}_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

