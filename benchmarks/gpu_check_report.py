"""Helpers of benchmarks/gpu_check.sh: `env OUT.json` writes the machine and package versions; `readme OUT DATA
BUDGET SECONDS` writes OUT/README.md from phases.tsv, env.json and the bench reports (what ran, what did not)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXTRA_PACKAGES = ("polygraphy", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_cu12_libs", "tensorrt_cu13_libs",
                  "onnxruntime-gpu", "nvidia-ml-py", "pytest", "onnxslim", "onnxconverter-common")


def write_env(path: Path) -> None:
    import torch

    from segdeploy.core.env import environment, package_version

    info = environment()
    info["packages"].update({name: package_version(name) for name in EXTRA_PACKAGES})
    info["torch_cuda"] = torch.version.cuda
    info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvidia_smi"] = f"unavailable: {exc}"
    info["written"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path.write_text(json.dumps(info, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def phases(out: Path) -> list[dict]:
    lines = (out / "phases.tsv").read_text().splitlines()[1:]
    return [dict(zip(("phase", "rc", "seconds", "command"), line.split("\t", 3))) for line in lines if line.strip()]


def rows_summary(report: dict) -> list[str]:
    """One line per variant/precision: the status at each batch size, p50 latency where it ran."""
    lines = []
    seen: dict[tuple, list[str]] = {}
    for row in report.get("results", []):
        key = (row["variant"], row["precision"])
        if row["status"] == "ok":
            text = f"b{row['batch_size']} {row['latency_ms']['p50']:.2f} ms"
            if row.get("cuda_graph", "captured") != "captured":
                text += f" ({row['cuda_graph']})"
        else:
            text = f"b{row['batch_size']} {row['status'][:140]}"
        seen.setdefault(key, []).append(text)
    for (variant, precision), texts in seen.items():
        lines.append(f"| {variant} | {precision} | {'; '.join(texts)} |")
    return lines


def write_readme(out: Path, data: str, budget: str, seconds: str) -> None:
    env = read_json(out / "env.json")
    packages = env.get("packages", {})
    versions = ", ".join(f"{k} {v}" for k, v in packages.items() if v)
    lines = [f"# GPU check on {env.get('gpu') or 'no GPU (a GPU_CHECK_DEVICE=cpu dry run: no GPU results)'}", "",
             f"Made by `benchmarks/gpu_check.sh` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC at commit "
             f"{env.get('git_commit') or 'unknown'}, {seconds} s of a {budget} s budget. GPU {env.get('gpu')}, driver "
             f"{env.get('driver')}, CUDA (torch) {env.get('torch_cuda')}, compute capability "
             f"{env.get('compute_capability')}; CPU {env.get('cpu')} ({env.get('cpu_count')} cores).",
             f"Packages: {versions}.", f"Data: {data}; U-Net R18 after 10 training steps: barely trained (latency "
             "does not depend on the weights; the accuracy columns show agreement with torch fp32).", "",
             "| phase | exit status | seconds | command |", "| --- | --- | ---: | --- |"]
    for phase in phases(out):
        lines.append(f"| {phase['phase']} | {phase['rc']} | {phase['seconds']} | `{phase['command']}` |")
    lines += ["", "Exit status 124/137: stopped at its time limit; `skipped`: the time budget was spent.", ""]
    compile_dirs = sorted(p for p in (out / "compile").glob("*") if p.is_dir()) if (out / "compile").is_dir() else []
    for title, folders in (("Bench sweep (bench.json, bench.md, plots)", [out]),
                           ("torch.compile sweeps (compile/<variant>/, one sweep each)", compile_dirs)):
        lines += [f"## {title}", "", "| variant | precision | batch: p50 or status |", "| --- | --- | --- |"]
        for folder in folders:
            report = read_json(folder / "bench.json")
            name = folder.name if folder != out else "(the sweep)"
            lines += rows_summary(report) if report else [f"| {name} | - | no bench.json: see logs/ |"]
        lines.append("")
    engines = sorted((out / "engines").glob("*.json")) if (out / "engines").is_dir() else []
    lines += ["## TensorRT", ""]
    if engines:
        for path in engines:
            manifest = read_json(path)
            lines.append(f"- `{path.name}`: TensorRT {manifest.get('tensorrt_version')}, build "
                         f"{manifest.get('build_seconds', 0):.1f} s, timing cache {manifest.get('timing_cache')}, "
                         f"TF32 {manifest.get('tf32_flag')}, profiles {[p['opt'][0] for p in manifest.get('profiles', [])]}")
    else:
        lines.append("No engine was built: TensorRT is not installed here (or `export --trt` failed: logs/export.log); "
                     "the trt-all rows say why. TensorRT was NOT executed by this check.")
    lines += ["", "Files: env.json (machine, packages, nvidia-smi), pytest.log (`pytest -m \"gpu or trt\"`), "
              "logs/<phase>.log, phases.tsv.", ""]
    (out / "README.md").write_text("\n".join(lines))


def main(argv: list[str]) -> int:
    if argv[0] == "env":
        write_env(Path(argv[1]))
    elif argv[0] == "readme":
        write_readme(Path(argv[1]), *argv[2:5])
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
