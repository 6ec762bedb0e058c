"""benchmarks/train_throughput.py's pure parts: model specs, variant skips under the AVX2 cap, the report.
The measurement itself is a benchmark (minutes of CPU), not run here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("train_throughput_bench", BENCH / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_models_parse_with_optional_lr(bench):
    assert bench.parse_models("unet:resnet18:1.0,unet:tu-mobilenetv4_conv_small:0.25:3e-3") == [
        ("unet", "resnet18", 1.0, 1e-3), ("unet", "tu-mobilenetv4_conv_small", 0.25, 3e-3)]
    with pytest.raises(SystemExit, match="not MODEL:ENCODER"):
        bench.parse_models("unet:resnet18")


def test_bf16_is_skipped_under_the_avx2_cap_only(bench, monkeypatch):
    monkeypatch.setattr(bench, "cpu_has_bf16", lambda: True)
    assert bench.skip_reason(bench.VARIANTS["bf16"], capped=True) == bench.BF16_CAPPED
    assert bench.skip_reason(bench.VARIANTS["bf16"], capped=False) is None
    assert bench.skip_reason(bench.VARIANTS["fp32+cl"], capped=True) is None
    monkeypatch.setattr(bench, "cpu_has_bf16", lambda: False)
    assert "no native bf16" in bench.skip_reason(bench.VARIANTS["bf16+cl"], capped=False)


def test_unknown_variant_is_refused(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--variants", "fp32,fp64"])


def test_report_puts_native_and_capped_side_by_side(bench):
    phases = {"data_only_s": 0.5, "images_per_s": 10.0, "profile_top_self_cpu": [{"op": "aten::convolution_backward",
                                                              "self_cpu_percent": 40.0}]}
    phases["phase_s"] = {"data": 0.1, "forward": 0.2, "loss": 0.0, "backward": 0.6, "optimizer": 0.1}
    phases["phase_percent"] = {k: 100 * v for k, v in phases["phase_s"].items()}

    def part(rate: float, skipped: dict) -> dict:
        return {"settings": {"threads": 2, "images": 32, "batch_size": 16, "rounds": 2, "variants": "fp32,bf16"},
                "environment": {"cpu": "cpu", "cpu_isa": "avx512"},
                "results": [{"model": "unet/resnet18 w1", "size": 128, "skipped": skipped,
                             "median_images_per_s": {"fp32": rate, "bf16": 2 * rate} if not skipped else
                             {"fp32": rate}, "speedup_vs_base": {} if skipped else {"bf16": 2.0},
                             "phases": phases}]}

    text = bench.markdown({"native": part(10.0, {}), "avx2_cap": part(7.0, {"bf16": bench.BF16_CAPPED}),
                           "cap_env": bench.AVX2_CAP, "load_average_before": [1.0], "load_average_after": [1.0]})
    assert "| unet/resnet18 w1 | 128 | fp32 | 10.00 | 1.00 (base) | 7.00 | 1.00 (base) |" in text
    assert f"| bf16 | 20.00 | 2.00 | skipped: {bench.BF16_CAPPED} | - |" in text
    assert "backward | optimizer" in text and "0.60 s (60.0%)" in text and "## FP32 phase breakdown, capped" in text
