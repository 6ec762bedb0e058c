"""What machine and software a result came from."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

import torch

from segdeploy import __version__
from segdeploy.core.errors import ConfigError
from segdeploy.core.isa import (CPU_FLAGS, INT8_ISA_LEVELS, ISA_CAP_VARIABLES, cpu_flags,  # noqa: F401 - read from env too
                                cpu_isa, effective_cpu_isa, isa_caps)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r} (known: auto, cpu, cuda)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but no CUDA GPU is visible to torch")
    return device


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _nvml():
    """pynvml (package nvidia-ml-py), initialised; None where it or the driver is missing."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - not installed, no driver, no GPU
        return None


def _nvidia_smi(fields: list[str], index: int = 0) -> dict[str, str]:
    try:
        out = subprocess.run(["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(fields)}",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0 or not out.stdout.strip():
        return {}
    values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(fields, values)) if len(values) == len(fields) else {}


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "[N/A]", "N/A") else None
    except ValueError:
        return None


def gpu_clocks(index: int = 0) -> dict:
    """Current and maximum SM clock in MHz (NVML, else nvidia-smi); empty where neither answers."""
    nvml = _nvml()
    if nvml is not None:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            return {"sm_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
                    "sm_clock_max_mhz": nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM)}
        except Exception:  # noqa: BLE001
            pass
    smi = _nvidia_smi(["clocks.sm", "clocks.max.sm"], index)
    return {"sm_clock_mhz": _number(smi.get("clocks.sm")),
            "sm_clock_max_mhz": _number(smi.get("clocks.max.sm"))} if smi else {}


def gpu_environment(index: int = 0, allow_torch: bool = True) -> dict:
    """GPU name, driver, CUDA, compute capability, memory and SM clock now (at the start of a run).

    NVML and nvidia-smi do not create a CUDA context in this process; torch does, so the benchmark
    parent (which must leave the device empty for its cells) passes allow_torch=False.
    """
    info: dict = {}
    nvml = _nvml()
    if nvml is not None:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            driver = nvml.nvmlSystemGetDriverVersion()
            cuda_driver = nvml.nvmlSystemGetCudaDriverVersion()
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            info.update({
                "gpu": name.decode() if isinstance(name, bytes) else name,
                "driver": driver.decode() if isinstance(driver, bytes) else driver,
                "cuda_driver_api": f"{cuda_driver // 1000}.{cuda_driver % 1000 // 10}",
                "compute_capability": f"{major}.{minor}",
                "gpu_memory_mb": round(nvml.nvmlDeviceGetMemoryInfo(handle).total / 2**20),
            })
        except Exception:  # noqa: BLE001
            pass
    if "gpu" not in info:
        smi = _nvidia_smi(["name", "driver_version", "compute_cap", "memory.total"], index)
        if smi:
            info.update({"gpu": smi["name"], "driver": smi["driver_version"],
                         "compute_capability": smi["compute_cap"],
                         "gpu_memory_mb": _number(smi["memory.total"])})
    if "gpu" not in info and allow_torch and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(index)
        info.update({"gpu": props.name, "gpu_memory_mb": round(props.total_memory / 2**20),
                     "compute_capability": f"{props.major}.{props.minor}"})
    if info:
        info["cuda_runtime_torch"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version() if allow_torch else None
        clocks = gpu_clocks(index)
        info["sm_clock_mhz_at_start"] = clocks.get("sm_clock_mhz")
        info["sm_clock_max_mhz"] = clocks.get("sm_clock_max_mhz")
    return info


# What makes an accuracy or timing figure another machine's: the processor, its instruction-set flags, the ISA
# caps in force (an AVX2-capped OpenVINO runs other INT8 kernels on the same CPU), the GPU, and the versions
# of the libraries that compute.
MACHINE_KEYS = ("cpu", "cpu_flags", "isa_caps", "gpu")
RUNTIME_PACKAGES = ("torch", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "tensorrt-cu12",
                    "tensorrt-cu13")


def machine_differences(recorded: dict | None, now: dict) -> list[str]:
    """How the machine, ISA caps and runtime versions an environment block (bench.json's, parity.json's) was
    recorded with differ from `now` (empty: none)."""
    if not recorded:
        return ["it records no environment"]
    found = [f"{key} {_short(recorded.get(key))} then, {_short(now.get(key))} now"
             for key in MACHINE_KEYS if recorded.get(key) != now.get(key)]
    then, here = recorded.get("packages") or {}, now.get("packages") or {}
    found += [f"{name} {then.get(name) or 'absent'} then, {here.get(name) or 'absent'} now"
              for name in RUNTIME_PACKAGES if then.get(name) != here.get(name)]
    return found


def _short(value) -> str:
    if isinstance(value, dict):  # cpu flags, ISA caps: name the ones present
        return "[" + " ".join(k for k, v in value.items() if v) + "]"
    return repr(value)


def isa_facts() -> dict:
    """This machine's INT8-relevant facts, for a sidecar or a benchmark row."""
    flags = cpu_flags()
    effective = effective_cpu_isa(flags)
    return {"cpu": cpu_model(), "cpu_isa": cpu_isa(flags), "isa_caps": isa_caps(), "effective_cpu_isa": effective,
            "int8_saturates": None if effective is None else effective not in ("amx", "avx512_vnni", "avx_vnni"),
            "cpu_flags": flags, "openvino_capabilities": _as_list(openvino_capabilities())}


@cache
def openvino_core():
    """The process's one `openvino.Core`, shared by every OpenVINO runner and the capability probe (raises
    ImportError without openvino). A Core per runner loaded the CPU plugin and its thread pool again for each."""
    import openvino as ov

    return ov.Core()


@cache
def openvino_capabilities() -> tuple[str, ...] | None:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of the CPU (e.g. FP32, BF16, INT8); None without openvino."""
    try:
        core = openvino_core()
    except ImportError:
        return None
    try:
        return tuple(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - no CPU plugin: nothing to report
        return ()


def onnxruntime_providers() -> list[str] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return list(ort.get_available_providers())


def _as_list(values: tuple | None) -> list | None:
    return None if values is None else list(values)


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_capped: set[int] = set()


def cap_threads(threads: int | None) -> int | None:
    """The thread count a runtime gets: at most the CPUs this process may use (more threads than cores only
    contend: `--threads 999` made every step ~100x slower and the load ~900). Warns once per value."""
    cpus = usable_cpus()
    if threads is None or threads <= cpus:
        return threads
    if threads not in _capped:
        _capped.add(threads)
        from segdeploy.core.progress import err_console

        err_console.print(f"warning: --threads {threads} is more than the {cpus} CPUs this process may use: each "
                          f"runtime gets {cpus}", highlight=False, soft_wrap=True)
    return cpus


def busy_cpu_warning(env: dict) -> str | None:
    """A warning when other processes already kept a core busy as a measurement starts (the 1-minute load
    average at least 1): what is measured next to them is slower than on an idle machine."""
    load = env.get("load_average_at_start")
    if not load or load[0] < 1.0:
        return None
    return (f"load average {load[0]:.2f} at start on {usable_cpus()} CPUs: other processes keep about "
            f"{min(load[0], usable_cpus()):.0f} core(s) busy, so these timings are slower than on an idle machine "
            "(an earlier bench still running? `ps -ef | grep segdeploy`)")


def environment(threads: int | None = None, allow_torch_cuda: bool = True, probe_openvino: bool = True) -> dict:
    """The environment block of a result. `probe_openvino=False` leaves OpenVINO unloaded in this process
    (its capabilities are then null): a parent that runs no OpenVINO variant need not load its CPU plugin."""
    info = {
        "segdeploy": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": load_average(),
        "torch_threads": threads or torch.get_num_threads(),
        "packages": {name: package_version(name) for name in (
            "torch", "torchvision", "segmentation-models-pytorch", "onnx", "onnxruntime",
            "onnxruntime-gpu", "openvino", "nncf", "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "numpy")},
        "onnxruntime_providers": onnxruntime_providers(),
        "cpu_flags": cpu_flags(),
        "cpu_isa": cpu_isa(cpu_flags()),  # avx2 | avx512 | avx512_vnni | avx_vnni | amx: tells an AVX2 row apart
        "isa_caps": isa_caps(),
        "effective_cpu_isa": effective_cpu_isa(),
        "openvino_capabilities": _as_list(openvino_capabilities()) if probe_openvino else None,
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        info.update(gpu_environment(0, allow_torch=allow_torch_cuda))
    return info
