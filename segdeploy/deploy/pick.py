"""Which measured variant to deploy: the fastest one within an accuracy budget of torch fp32.

A pure function of bench.json's and parity.json's rows (`pick`): every (variant, precision, batch size) that
bench measured is a candidate; accuracy comes from parity.json's row for the same file, else from bench's
accuracy block. A candidate loses with a reason (unavailable, failed, not deployable, unmeasured, over the
budget, slower); the winner is the best of the rest by the objective. Nothing unmeasured or failed is ever
picked. Reading the files and checking that they describe this machine and these files is measured.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from segdeploy.core.deploy_config import DeployConfig
from segdeploy.core.errors import ConfigError

OBJECTIVES = ("latency", "throughput")
REFERENCE_NAME = ("torch", "fp32")  # what every accuracy figure is relative to


@dataclass
class Candidate:
    variant: str
    precision: str
    backend: str
    graph: str | None
    batch_size: int | None
    status: str  # bench's status of the cell ("ok", "oom", "failed: ...", "unavailable: ...")
    p50_ms: float | None = None
    throughput_ips: float | None = None
    miou: float | None = None
    miou_reference: float | None = None
    agreement: float | None = None
    images: int | None = None
    accuracy_source: str | None = None  # parity.json | bench.json | reference
    artifact: str | None = None
    artifact_sha256: str | None = None
    bench_row: dict = field(default_factory=dict, repr=False)
    reason: str | None = None  # None: eligible (the winner keeps None)
    chosen: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.variant, self.precision

    @property
    def miou_drop_points(self) -> float | None:
        if self.miou is None or self.miou_reference is None:
            return None
        return 100 * (self.miou_reference - self.miou)


@dataclass
class Decision:
    candidates: list[Candidate]
    chosen: Candidate | None
    objective: str
    settings: DeployConfig

    def passing(self) -> list[Candidate]:
        """The candidates within the budget (winner first), one per variant at its best batch."""
        best: dict[tuple[str, str], Candidate] = {}
        for c in self.candidates:
            if c.chosen or _lost_on_speed(c):
                best.setdefault(c.key, c)
        return list(best.values())


def check_objective(settings: DeployConfig) -> None:
    if settings.objective not in OBJECTIVES:
        raise ConfigError(f"--objective must be {' or '.join(OBJECTIVES)}, got {settings.objective!r}")


def accuracy_rows(bench: dict, parity: dict | None) -> dict[tuple[str, str], dict]:
    """(variant, precision) -> its accuracy row: parity.json first, bench.json's accuracy block second;
    torch fp32 is the reference itself (agreement 1, its own mIoU)."""
    found: dict[tuple[str, str], dict] = {}
    for row in (parity or {}).get("results", []):
        found[(row["variant"], row["precision"])] = {**row, "source": "parity.json",
                                                     "images": row.get("images", (parity or {}).get("images"))}
    for row in bench.get("accuracy") or []:
        key = (row["variant"], row["precision"])
        if key not in found or found[key].get("status") != "ok":
            found[key] = {**row, "source": row.get("source") if row.get("source") == "reference" else "bench.json"}
    if REFERENCE_NAME not in found:
        reference = next((r.get("miou_reference") for r in found.values() if r.get("miou_reference") is not None), None)
        if reference is not None:
            found[REFERENCE_NAME] = {"status": "ok", "miou": reference, "miou_reference": reference,
                                     "argmax_agreement": 1.0, "source": "reference"}
    return found


def candidates_from(bench: dict, parity: dict | None) -> list[Candidate]:
    """One candidate per bench cell, with its variant's accuracy; variants parity checked but bench never
    timed are candidates too (without a batch size)."""
    accuracy = accuracy_rows(bench, parity)
    out = []
    for row in bench.get("results", []):
        key = (row.get("variant", row["backend"]), row["precision"])
        latency = row.get("latency_ms") or {}
        c = Candidate(key[0], key[1], row["backend"], row.get("graph"), row.get("batch_size"), row["status"],
                      p50_ms=latency.get("p50"), throughput_ips=row.get("throughput_ips"), bench_row=row,
                      artifact_sha256=row.get("artifact_sha256"))
        _attach_accuracy(c, accuracy.get(key))
        out.append(c)
    timed = {c.key for c in out}
    for key, row in accuracy.items():
        if key not in timed:
            c = Candidate(key[0], key[1], row.get("backend", key[0].split("+")[0]), row.get("graph"), None,
                          row.get("status", "ok"))
            _attach_accuracy(c, row)
            out.append(c)
    return out


def _attach_accuracy(c: Candidate, row: dict | None) -> None:
    if not row or row.get("status", "ok") != "ok" or row.get("miou") is None:
        return
    c.miou, c.agreement = row["miou"], row.get("argmax_agreement")
    c.miou_reference = row.get("miou_reference", row["miou"] if c.key == REFERENCE_NAME else None)
    c.images, c.accuracy_source = row.get("images"), row.get("source")
    c.artifact = row.get("artifact")
    c.artifact_sha256 = c.artifact_sha256 or row.get("artifact_sha256")


def _first_reason(c: Candidate, settings: DeployConfig, deployable: Callable[[str], bool]) -> str | None:
    status = c.status.split(":")[0]
    if status == "unavailable":
        return c.status
    if status != "ok":
        return c.status if status == "failed" else f"failed: {c.status}"
    if c.batch_size is None:
        return "unmeasured: no timing in bench.json"
    if settings.batch is not None and c.batch_size != settings.batch:
        return f"batch {c.batch_size}, --batch {settings.batch} asked"
    if not deployable(c.backend):
        return f"not deployable: a bundle runs a graph or engine, not {c.backend}"
    if c.miou is None or c.agreement is None or c.miou_reference is None:
        return "unmeasured: no mIoU/agreement with torch fp32 (parity or bench --accuracy)"
    drop = c.miou_drop_points
    if drop > settings.max_miou_drop:
        return f"over the budget: mIoU {drop:.2f} pt below torch fp32 (max {settings.max_miou_drop:g})"
    if c.agreement < settings.min_agreement:
        return (f"over the budget: agreement {100 * c.agreement:.3f}% < {100 * settings.min_agreement:.3f}%")
    return None


def _score(c: Candidate, objective: str) -> tuple:
    """Smaller is better; ties broken by name and batch so the choice is the same every time."""
    speed = c.p50_ms if objective == "latency" else -c.throughput_ips
    return speed, c.variant, c.precision, c.batch_size


def pick(bench: dict, parity: dict | None, settings: DeployConfig,
         deployable: Callable[[str], bool]) -> Decision:
    """Rank every measured candidate; the best one inside the budget is chosen (None: none is)."""
    check_objective(settings)
    candidates = candidates_from(bench, parity)
    for c in candidates:
        c.reason = _first_reason(c, settings, deployable)
    eligible = sorted((c for c in candidates if c.reason is None), key=lambda c: _score(c, settings.objective))
    chosen = eligible[0] if eligible else None
    if chosen:
        chosen.chosen = True
        for c in eligible[1:]:
            c.reason = _slower(c, chosen, settings.objective)
    candidates.sort(key=lambda c: (not c.chosen, c.reason is not None and not _lost_on_speed(c),
                                   _score(c, settings.objective) if c.p50_ms is not None and c.throughput_ips is not None
                                   else (float("inf"), c.variant, c.precision, c.batch_size or 0)))
    return Decision(candidates, chosen, settings.objective, settings)


def _lost_on_speed(c: Candidate) -> bool:
    return (c.reason or "").startswith(("slower", "lower"))


def _slower(c: Candidate, chosen: Candidate, objective: str) -> str:
    if objective == "latency":
        return f"slower: p50 {c.p50_ms:.2f} ms vs {chosen.p50_ms:.2f} ms"
    return f"lower throughput: {c.throughput_ips:.1f} vs {chosen.throughput_ips:.1f} img/s"
