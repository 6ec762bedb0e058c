"""What this CPU offers the INT8 and BF16 kernels: its flags, its INT8 instruction level and the ISA caps set
in the environment (no segdeploy imports: core/env.py builds the environment block from these)."""

from __future__ import annotations

import os
from pathlib import Path


# The /proc/cpuinfo flags that decide the speed of reduced-precision CPU inference (oneDNN, OpenVINO, ORT).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, bool] | None:
    """Which of CPU_FLAGS this CPU has (None where /proc/cpuinfo cannot be read)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    present = set(line.partition(":")[2].split())
    return {flag: flag in present for flag in CPU_FLAGS}


# What an INT8 kernel gets on this CPU, best first: AMX tiles; VNNI (VPDPBUSD, int32 sums); else
# VPMADDUBSW, whose int16 pair sums saturate (INT8 graphs need 7-bit weights: NNCF's overflow_fix,
# ONNX Runtime's reduce_range).
INT8_ISA_LEVELS = (("amx", ("amx_int8",)), ("avx512_vnni", ("avx512_vnni",)), ("avx_vnni", ("avx_vnni",)),
                   ("avx512", ("avx512f",)), ("avx2", ("avx2",)))
# Environment variables that cap the ISA of oneDNN (OpenVINO's CPU plugin, torch) and of OpenVINO's own
# capability report; README "INT8" says what each changes here.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OV_CPU_MAX_ISA")


def cpu_isa(flags: dict[str, bool] | None) -> str | None:
    """The best INT8 instruction level among `flags` (INT8_ISA_LEVELS), "sse" below AVX2, None unknown."""
    if flags is None:
        return None
    return next((level for level, needs in INT8_ISA_LEVELS if all(flags.get(f) for f in needs)), "sse")


def isa_caps() -> dict[str, str]:
    """The ISA caps set in this process's environment (e.g. {"ONEDNN_MAX_CPU_ISA": "AVX2"})."""
    return {name: os.environ[name] for name in ISA_CAP_VARIABLES if os.environ.get(name)}


def _cap_level(cap: str) -> str:
    """A oneDNN ISA name (AVX2, AVX2_VNNI, AVX512_CORE_VNNI, AVX512_CORE_AMX...) as an INT8_ISA_LEVELS name."""
    cap = cap.upper()
    if "AMX" in cap:
        return "amx"
    if "VNNI" in cap:
        return "avx512_vnni" if "AVX512" in cap or "AVX10" in cap else "avx_vnni"
    if "AVX512" in cap or "AVX10" in cap:
        return "avx512"
    return "avx2" if "AVX2" in cap else "sse"


def effective_cpu_isa(flags: dict[str, bool] | None = None, caps: dict[str, str] | None = None) -> str | None:
    """cpu_isa lowered to the ISA cap set in the environment (ONEDNN_MAX_CPU_ISA=AVX2 on a VNNI CPU: avx2)."""
    level = cpu_isa(cpu_flags() if flags is None else flags)
    order = [name for name, _ in INT8_ISA_LEVELS] + ["sse"]
    caps = isa_caps() if caps is None else caps
    for cap in caps.values():
        capped = _cap_level(cap)
        if level is not None and order.index(capped) > order.index(level):
            level = capped
    return level
