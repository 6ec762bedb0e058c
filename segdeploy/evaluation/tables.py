"""What `eval` and `parity` print: rich tables of the results they wrote to JSON."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _px(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def eval_table(result: dict, title: str) -> Table:
    table = Table(title=title)
    for column in ("class", "IoU %", "Dice %", "Acc %", "HD95 px"):
        table.add_column(column, justify="right" if column != "class" else "left")
    for cls, values in result["per_class"].items():
        table.add_row(escape(cls), _pct(values["iou"]), _pct(values["dice"]), _pct(values["accuracy"]),
                      _px(values["hd95"]))
    table.add_row("[bold]mean", _pct(result["miou"]), _pct(result["mean_dice"]),
                  f"pixel {_pct(result['pixel_accuracy'])}", _px(result["hd95"]))
    return table


def parity_table(report: dict) -> Table:
    table = Table(title=f"parity against torch fp32 ({report['images']} {report['dataset']} validation images)")
    for column in ("variant", "precision", "device", "max |err|", "mean |err|", "argmax agree %", "mIoU %",
                   "delta pt", "passed"):
        table.add_column(column, justify="right")
    for r in report["results"]:
        if r["status"] != "ok":
            table.add_row(r["variant"], r["precision"], r["device"], f"[yellow]{escape(r['status'])}", *[""] * 4, "-")
            continue
        table.add_row(r["variant"], r["precision"], r["device"], _err(r["max_abs_err"]), _err(r["mean_abs_err"]),
                      _pct(r["argmax_agreement"], 3), _pct(r["miou"]), f"{100 * r['miou_delta']:+.3f}",
                      "[green]yes" if r["passed"] else "[red]NO")
    return table


def _err(value: float | None) -> str:
    """A logit error; n/a for a deploy graph, whose mask was compared (no logits leave it)."""
    return "n/a (mask)" if value is None else f"{value:.2e}"


def feature_lines(report: dict) -> list[str]:
    return [f"{f['output']} ({f['backend']}): max |err| {f['max_abs_err']:.2e}, mean |err| {f['mean_abs_err']:.2e}, "
            f"relative {f['max_rel_err']:.2e}, passed: {'yes' if f['passed'] else 'NO'}"
            for f in report.get("feature_parity", [])]


def parity_failed(report: dict) -> bool:
    """A variant that ran and missed its tolerance, an intermediate graph that differs, or nothing ran."""
    ran = [r for r in report["results"] if r["status"] == "ok"]
    return not ran or any(not r["passed"] for r in ran) or any(not f["passed"] for f in report.get("feature_parity", []))
