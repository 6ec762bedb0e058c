"""The bundle's README.md and the table `segdeploy deploy` prints: what was chosen, why, how to run it."""

from __future__ import annotations

from typing import Any

from segdeploy.deploy.pick import Candidate, Decision


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def figures(c: Candidate) -> dict[str, str]:
    """A candidate's figures as the table and the README show them."""
    drop = c.miou_drop_points
    drop = None if drop is None else (0.0 if abs(drop) < 0.005 else drop)  # no "-0.00"
    return {"batch": "-" if c.batch_size is None else str(c.batch_size), "p50 ms": _fmt(c.p50_ms, ".2f"),
            "img/s": _fmt(c.throughput_ips, ".1f"), "mIoU %": _fmt(None if c.miou is None else 100 * c.miou, ".2f"),
            "drop pt": _fmt(drop, "+.2f"), "agree %": _fmt(None if c.agreement is None else 100 * c.agreement, ".3f")}


def decision_table(decision: Decision):
    """Every candidate, its figures, and why each losing one lost (rich table)."""
    from rich.markup import escape
    from rich.table import Table

    s = decision.settings
    title = (f"deploy: fastest by {decision.objective}{'' if s.batch is None else f' at batch {s.batch}'}, "
             f"mIoU at most {s.max_miou_drop:g} pt below torch fp32, agreement >= {100 * s.min_agreement:g}%")
    table = Table(title=title)
    for column in ("", "variant", "precision", "batch", "p50 ms", "img/s", "mIoU %", "drop pt", "agree %", "why not"):
        table.add_column(column, justify="left" if column in ("variant", "why not") else "right")
    for c in decision.candidates:
        row = figures(c)
        table.add_row("*" if c.chosen else "", c.variant, c.precision, *(row[k] for k in list(row)),
                      "chosen" if c.chosen else escape(c.reason or ""))
    return table


def bundle_readme(manifest: dict[str, Any]) -> str:
    m = manifest["measured"]
    env = m.get("environment") or {}
    packages = env.get("packages") or {}
    runtime = manifest["runtime"]
    lines = [f"# {manifest['model']['name']} {manifest['model']['encoder']}: {manifest['variant']} "
             f"({manifest['arithmetic']})", "",
             f"Written by `segdeploy deploy` from the run {manifest['run']}: the fastest variant by "
             f"{manifest['budget']['objective']} within {manifest['budget']['max_miou_drop']:g} mIoU point(s) of "
             f"torch fp32 and {100 * manifest['budget']['min_agreement']:g}% argmax agreement.", "",
             f"- measured at batch {m['batch_size']}: p50 {_fmt(m['p50_ms'], '.2f')} ms, "
             f"{_fmt(m['throughput_ips'], '.1f')} images/s on {env.get('cpu')} ({m.get('device')}), "
             f"{(m.get('bench_settings') or {}).get('threads')} threads",
             f"- mIoU {_fmt(100 * m['miou'], '.2f')}% vs torch fp32 {_fmt(100 * m['miou_reference'], '.2f')}% on "
             f"{m['images']} validation images, argmax agreement {_fmt(100 * m['argmax_agreement'], '.3f')}%",
             f"- `{manifest['model_file']}` is the file that was measured (sha256 {manifest['model_sha256'][:16]}...; "
             "every file's sha256 is in manifest.json)", ""]
    if runtime:
        lines += ["## Run it", "", "```bash",
                  f"pip install numpy pillow {runtime}=={packages.get(runtime) or ''}".rstrip("="),
                  "python predict.py SOURCE --output masks/   # an image, a folder, a glob or a .txt list",
                  "```", "",
                  "One PNG per image at its original size, pixel value = class index (`classes.json` names them). "
                  "predict.py needs numpy, Pillow and the runtime above, not torch or segdeploy; `pixels.py` is "
                  "segdeploy's own decoding and resizing code, so the masks equal `segdeploy predict`'s.", ""]
    else:
        lines += ["The engine runs on the GPU it was built for; serve it with Triton (below).", ""]
    if manifest.get("triton"):
        lines += ["## Triton", "", "`triton/` is a Triton Inference Server model repository "
                  "(`tritonserver --model-repository triton/`): " +
                  ", ".join(f"`{t['name']}` (max batch {t['max_batch_size']}, preferred {t['preferred_batch_size']})"
                            for t in manifest["triton"]) + ". The configs were generated and parsed with "
                  "tritonclient's ModelConfig protobuf; no Triton server was run where this bundle was made.", ""]
    return "\n".join(lines)
