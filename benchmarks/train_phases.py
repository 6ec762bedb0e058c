"""Where a training step's time goes (benchmarks/train_throughput.py --phases): data loading and augmentation,
forward, loss, backward, optimiser step, each timed with time.perf_counter and summed over a pass, plus a
torch.profiler run of a few steps (top ops by self CPU time); and the Markdown report of train_throughput.

Not run on its own: train_throughput.py imports it.
"""

from __future__ import annotations

import time

import torch

PHASES = ("data", "forward", "loss", "backward", "optimizer")


def data_only(loader) -> tuple[float, int]:
    """Seconds to iterate the DataLoader alone (decode, augmentation, collation) and the images it gave."""
    images_seen, start = 0, time.perf_counter()
    for images, _ in loader:
        images_seen += len(images)
    return time.perf_counter() - start, images_seen


def timed_pass(model, optimizer, loss_fn, loader) -> tuple[dict[str, float], int]:
    """One FP32 training pass with each phase timed apart; zero_grad counts to backward, loss.item() to loss."""
    model.train()
    seconds = dict.fromkeys(PHASES, 0.0)
    images_seen, batches = 0, iter(loader)
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        t1 = time.perf_counter()
        seconds["data"] += t1 - t0
        if batch is None:
            return seconds, images_seen
        images, masks = batch
        logits = model(images)
        t2 = time.perf_counter()
        loss = loss_fn(logits, masks)
        loss.item()
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t4 = time.perf_counter()
        optimizer.step()
        t5 = time.perf_counter()
        for name, span in zip(PHASES[1:], (t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            seconds[name] += span
        images_seen += len(images)


def profile_steps(model, optimizer, loss_fn, loader, steps: int, top: int = 10) -> list[dict]:
    """torch.profiler over `steps` training steps: the `top` ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    model.train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step, (images, masks) in enumerate(loader):
            if step >= steps:
                break
            loss = loss_fn(model(images), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2),
             "self_cpu_percent": round(100 * e.self_cpu_time_total / total, 1),
             "cpu_total_ms": round(e.cpu_time_total / 1e3, 2)} for e in events[:top]]


def measure_phases(model, optimizer, loss_fn, make_loader, rounds: int, profile_steps_count: int,
                   warm: bool) -> dict:
    """Data alone, then `rounds` timed passes (after a warm-up pass unless `warm`: the model already trained
    in the interleaved rounds), medians per phase, then the profile."""
    if not warm:
        timed_pass(model, optimizer, loss_fn, make_loader(0))  # warm-up: oneDNN primitives, allocator
    data = [data_only(make_loader(r + 1)) for r in range(rounds)]
    passes = [timed_pass(model, optimizer, loss_fn, make_loader(r + 1)) for r in range(rounds)]
    images = passes[0][1]
    median = {name: sorted(p[0][name] for p in passes)[len(passes) // 2] for name in PHASES}
    step_total = sum(median.values())
    return {"images_per_pass": images, "rounds": rounds,
            "data_only_s": sorted(d[0] for d in data)[len(data) // 2],
            "phase_s": {k: round(v, 4) for k, v in median.items()},
            "phase_percent": {k: round(100 * v / step_total, 1) for k, v in median.items()},
            "images_per_s": images / step_total,
            "profile_steps": profile_steps_count,
            "profile_top_self_cpu": profile_steps(model, optimizer, loss_fn, make_loader(0), profile_steps_count)}


def _rate(part: dict | None, model: str, size: int, variant: str) -> tuple[str, str]:
    """(images/s, speed-up) cells of one variant in one result part (native or capped)."""
    if part is None:
        return "-", "-"
    row = next((r for r in part["results"] if r["model"] == model and r["size"] == size), None)
    if row is None:
        return "-", "-"
    if variant in row["skipped"]:
        return f"skipped: {row['skipped'][variant]}", "-"
    speedup = row["speedup_vs_base"].get(variant)
    return f"{row['median_images_per_s'][variant]:.2f}", "1.00 (base)" if speedup is None else f"{speedup:.2f}"


def markdown(result: dict) -> str:
    """Throughput table (native and AVX2-capped side by side) and the phase breakdown."""
    native, capped = result["native"], result.get("avx2_cap")
    env = native["environment"]
    lines = [f"# Training throughput (issue 23): {env['cpu']}, ISA {env['cpu_isa']}", "",
             f"{native['settings']['threads']} torch threads, {native['settings']['images']} images a pass, batch "
             f"{native['settings']['batch_size']}, {native['settings']['rounds']} interleaved rounds after a warm-up "
             "round; speed-up = median of per-round ratios to the first variant. Capped = a child process with "
             f"{result.get('cap_env') or 'no cap'}. Load average {result['load_average_before'][0]:.2f} before, "
             f"{result['load_average_after'][0]:.2f} after.", "",
             "| model | size | variant | images/s native | speed-up | images/s capped | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for row in native["results"]:
        for variant in native["settings"]["variants"].split(","):
            cells = (*_rate(native, row["model"], row["size"], variant),
                     *_rate(capped, row["model"], row["size"], variant))
            lines.append(f"| {row['model']} | {row['size']} | {variant} | " + " | ".join(cells) + " |")
    for label, part in (("native", native), ("capped", capped)):
        phases = [r for r in (part or {}).get("results", []) if r.get("phases")]
        if not phases:
            continue
        lines += ["", f"## FP32 phase breakdown, {label} (median pass; percent of the summed step time)", "",
                  "| model | size | data-only pass s | " + " | ".join(PHASES) + " | images/s | top self-CPU ops |",
                  "|---|---|---|" + "---|" * (len(PHASES) + 2)]
        for row in phases:
            p = row["phases"]
            ops = ", ".join(f"{o['op']} {o['self_cpu_percent']}%" for o in p["profile_top_self_cpu"][:4])
            lines.append(f"| {row['model']} | {row['size']} | {p['data_only_s']:.2f} | " + " | ".join(
                f"{p['phase_s'][k]:.2f} s ({p['phase_percent'][k]}%)" for k in PHASES) +
                f" | {p['images_per_s']:.2f} | {ops} |")
    return "\n".join(lines) + "\n"
