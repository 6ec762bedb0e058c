"""`segdeploy deploy`'s choice (deploy/pick.py) on hand-made bench/parity rows, and its refusals
(deploy/measured.py): missing, another machine's, stale."""

from __future__ import annotations

import pytest

from segdeploy.core.deploy_config import DeployConfig
from segdeploy.core.errors import ConfigError
from segdeploy.deploy.measured import machine_differences
from segdeploy.deploy.pick import pick
from segdeploy.deploy.targets import is_deployable

REFERENCE_MIOU = 0.80


def cell(variant: str, precision: str, batch: int, p50: float | None, ips: float | None, status: str = "ok") -> dict:
    return {"backend": variant.split("+")[0], "variant": variant, "precision": precision,
            "graph": None if variant.startswith("torch") else precision, "batch_size": batch, "status": status,
            "latency_ms": None if p50 is None else {"p50": p50}, "throughput_ips": ips, "artifact_sha256": "x"}


def parity_row(variant: str, precision: str, miou: float, agreement: float, status: str = "ok") -> dict:
    return {"variant": variant, "backend": variant.split("+")[0], "precision": precision, "graph": precision,
            "status": status, "miou": miou if status == "ok" else None, "miou_reference": REFERENCE_MIOU,
            "argmax_agreement": agreement if status == "ok" else None, "artifact_sha256": "x"}


def measurements(cells: list[dict], rows: list[dict]) -> tuple[dict, dict]:
    return {"results": cells, "accuracy": []}, {"images": 120, "results": rows}


BENCH, PARITY = measurements(
    [cell("torch", "fp32", 1, 20.0, 50.0), cell("torch", "fp32", 8, 100.0, 80.0),
     cell("onnxruntime", "fp32", 1, 10.0, 100.0), cell("onnxruntime", "fp32", 8, 60.0, 133.0),
     cell("onnxruntime", "int8", 1, 5.0, 200.0), cell("onnxruntime", "int8", 8, 32.0, 250.0),
     cell("openvino", "fp32", 1, 8.0, 125.0), cell("openvino", "fp32", 8, 48.0, 166.0),
     cell("openvino+bf16", "bf16", 1, None, None, "unavailable: this CPU has no BF16"),
     cell("onnxruntime", "fp16", 1, None, None, "failed: RuntimeError: bad graph")],
    [parity_row("onnxruntime", "fp32", 0.80, 1.0), parity_row("onnxruntime", "int8", 0.79, 0.99),
     parity_row("openvino", "fp32", 0.80, 1.0), parity_row("openvino+bf16", "bf16", 0, 0, "unavailable: no BF16"),
     parity_row("onnxruntime", "fp16", 0, 0, "failed: bad graph")])


def decide(bench=BENCH, parity=PARITY, **settings):
    return pick(bench, parity, DeployConfig(**settings), is_deployable)


def reasons(decision) -> dict[tuple[str, str, int | None], str | None]:
    return {(c.variant, c.precision, c.batch_size): c.reason for c in decision.candidates}


def test_latency_picks_the_fastest_call_inside_the_budget():
    decision = decide()  # int8: 1.0 pt below torch fp32 > 0.5 pt budget
    assert (decision.chosen.variant, decision.chosen.precision, decision.chosen.batch_size) == ("openvino", "fp32", 1)
    why = reasons(decision)
    assert why[("onnxruntime", "int8", 1)].startswith("over the budget: mIoU 1.00 pt")
    assert why[("onnxruntime", "fp32", 1)] == "slower: p50 10.00 ms vs 8.00 ms"
    assert why[("torch", "fp32", 1)].startswith("not deployable")
    assert why[("openvino+bf16", "bf16", 1)].startswith("unavailable")
    assert why[("onnxruntime", "fp16", 1)].startswith("failed")
    assert decision.candidates[0] is decision.chosen  # the table starts with the winner


def test_a_wider_budget_lets_int8_win_and_throughput_looks_at_every_batch():
    decision = decide(max_miou_drop=1.5)
    assert decision.chosen.key == ("onnxruntime", "int8") and decision.chosen.batch_size == 1
    decision = decide(max_miou_drop=1.5, objective="throughput")
    assert decision.chosen.key == ("onnxruntime", "int8") and decision.chosen.batch_size == 8
    assert reasons(decision)[("openvino", "fp32", 8)] == "lower throughput: 166.0 vs 250.0 img/s"


def test_agreement_budget_and_batch_filter():
    decision = decide(max_miou_drop=1.5, min_agreement=0.995)
    assert reasons(decision)[("onnxruntime", "int8", 1)].startswith("over the budget: agreement 99.000%")
    decision = decide(batch=8)
    assert decision.chosen.batch_size == 8 and decision.chosen.variant == "openvino"
    assert reasons(decision)[("openvino", "fp32", 1)] == "batch 1, --batch 8 asked"


def test_never_picks_what_parity_did_not_measure():
    bench, parity = measurements([cell("onnxruntime", "fp32", 1, 10.0, 100.0), cell("openvino", "fp32", 1, 1.0, 900.0)],
                                 [parity_row("onnxruntime", "fp32", 0.80, 1.0)])
    decision = decide(bench, parity)
    assert decision.chosen.variant == "onnxruntime"  # openvino is faster but its accuracy is unknown
    assert reasons(decision)[("openvino", "fp32", 1)].startswith("unmeasured: no mIoU")


def test_a_checked_variant_that_bench_never_timed_is_unmeasured():
    bench, parity = measurements([cell("onnxruntime", "fp32", 1, 10.0, 100.0)],
                                 [parity_row("onnxruntime", "fp32", 0.80, 1.0), parity_row("openvino", "fp32", 0.80, 1.0)])
    assert reasons(decide(bench, parity))[("openvino", "fp32", None)] == "unmeasured: no timing in bench.json"


def test_bench_accuracy_block_counts_when_parity_lacks_the_variant():
    bench, parity = measurements([cell("openvino", "fp32", 1, 8.0, 125.0)], [parity_row("onnxruntime", "fp32", 0.8, 1.0)])
    bench["accuracy"] = [{**parity_row("openvino", "fp32", 0.80, 1.0), "source": "measured"}]
    decision = decide(bench, parity)
    assert decision.chosen.variant == "openvino" and decision.chosen.accuracy_source == "bench.json"


def test_none_inside_the_budget():
    bench, parity = measurements([cell("onnxruntime", "int8", 1, 5.0, 200.0), cell("torch", "fp32", 1, 20.0, 50.0)],
                                 [parity_row("onnxruntime", "int8", 0.70, 0.9)])
    decision = decide(bench, parity)
    assert decision.chosen is None and all(c.reason for c in decision.candidates)


def test_passing_lists_one_row_per_variant_within_the_budget():
    decision = decide(objective="throughput")
    assert [c.key for c in decision.passing()] == [("openvino", "fp32"), ("onnxruntime", "fp32")]
    assert [c.batch_size for c in decision.passing()] == [8, 8]


def test_unknown_objective_is_a_usage_error():
    with pytest.raises(ConfigError, match="latency or throughput"):
        decide(objective="memory")


def test_machine_differences_name_what_changed():
    env = {"cpu": "AMD EPYC", "cpu_flags": {"avx2": True, "avx512f": True}, "gpu": None,
           "packages": {"onnxruntime": "1.32.0", "numpy": "2.4"}}
    assert machine_differences(env, {**env, "packages": {**env["packages"], "numpy": "2.5"}}) == []
    other = {**env, "cpu_flags": {"avx2": True, "avx512f": False}, "packages": {"onnxruntime": "1.31.0"}}
    found = machine_differences(env, other)
    assert found == ["cpu_flags [avx2 avx512f] then, [avx2] now", "onnxruntime 1.32.0 then, 1.31.0 now"]
    assert machine_differences(None, env) == ["it records no environment"]
    # the same CPU under an ISA cap runs other INT8 kernels: its figures are another machine's
    capped = {**env, "isa_caps": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}
    assert machine_differences(capped, {**env, "isa_caps": {}}) == ["isa_caps [ONEDNN_MAX_CPU_ISA] then, [] now"]
