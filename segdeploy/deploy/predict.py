"""`segdeploy predict RUN SOURCE`: class-index PNG masks of a user's images at their original size.

Streaming with bounded memory: a pool of threads decodes and resizes the next images (core/pixels.py, the
decode path eval uses) while the runner infers the current batch, and a second pool resizes logits to the
original size, takes the argmax and writes the PNGs (and overlays). At most `2 x batch` images wait in each
stage. Every file is written atomically; predictions.json is rewritten at the end (also after Ctrl-C), so
a rerun skips the images whose mask exists and keeps their records.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from segdeploy.core import fileio, pixels
from segdeploy.core.config import PredictConfig
from segdeploy.core.progress import err_console, make_progress
from segdeploy.core.rundir import RunDir
from segdeploy.core.size import input_hw
from segdeploy.deploy.predict_inputs import (Item, chosen_variant, class_palette, existing_record, open_source,
                                             record_of)
from segdeploy.runtime.base import Runner
from segdeploy.runtime.variants import RuntimeContext, build_runner, require_artifacts

PREDICTIONS = "predictions.json"
STAGES = ("decode", "preprocess", "inference", "postprocess", "encode")


@dataclass
class Prepared:
    item: Item
    model_input: np.ndarray | None = None  # float32 CHW normalised, or uint8 HWC for uint8-input graphs
    original_hw: tuple[int, int] = (0, 0)
    original: np.ndarray | None = None  # kept for overlays only
    seconds: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class Outcome:
    """What a prediction did: records of the masks now in the folder, the files skipped, stage seconds."""

    output: Path
    variant: str
    source: str = ""
    chosen_by: str = ""  # --backend, the deploy manifest, or the default
    model_hw: tuple[int, int] = (0, 0)
    mask_output: bool = False  # the graph ends in an argmax: masks are upsampled, not logits
    records: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    kept: int = 0  # masks a previous run wrote, left as they are
    written: int = 0
    seconds: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    wall_seconds: float = 0.0

    @property
    def images_per_second(self) -> float | None:
        return self.written / self.wall_seconds if self.wall_seconds > 0 and self.written else None


def uses_uint8_input(runner: Runner) -> bool:
    return getattr(runner, "input_format", "normalized") == "uint8_nhwc"


def outputs_mask(runner: Runner) -> bool:
    return getattr(runner, "output_format", "logits") == "mask"


def infer_batch(runner: Runner, batch: np.ndarray) -> np.ndarray:
    """Logits N x C x h x w, or masks N x h x w for graphs that end in an argmax."""
    if not uses_uint8_input(runner):
        return runner.infer(batch)
    output = runner.run(runner.prepare(np.ascontiguousarray(batch, dtype=np.uint8)))
    runner.synchronize()
    return runner.to_numpy(output)


def prepare(item: Item, hw: tuple[int, int], uint8_input: bool, keep_original: bool) -> Prepared:
    """Decode one image (worker thread) and bring it to the model's input."""
    result = Prepared(item)
    start = time.perf_counter()
    try:
        image = item.load()
    except pixels.PixelError as exc:
        result.error = str(exc)
        return result
    decoded = time.perf_counter()
    resized = pixels.resize_rgb(image, hw)
    result.model_input = resized if uint8_input else pixels.normalize(resized)
    result.original_hw = (image.height, image.width)
    result.original = np.asarray(image) if keep_original else None
    result.seconds = {"decode": decoded - start, "preprocess": time.perf_counter() - decoded}
    return result


def finish(prepared: Prepared, output: np.ndarray, mask_output: bool, output_dir: Path, class_names: list[str],
           palette: np.ndarray | None, overlay: bool) -> dict:
    """The original-size mask of one image, written as PNG (+ overlay JPEG); its record (worker thread)."""
    start = time.perf_counter()
    hw = prepared.original_hw
    mask = pixels.upsample_mask(output, hw) if mask_output else pixels.logits_to_mask(output, hw)
    post = time.perf_counter()
    path = output_dir / prepared.item.mask
    fileio.write_bytes(path, pixels.mask_png(mask, palette))
    if overlay:
        fileio.write_bytes(path.with_suffix(".overlay.jpg"),
                           pixels.jpeg_bytes(pixels.overlay(prepared.original, mask, palette)))
    seconds = {**prepared.seconds, "postprocess": post - start, "encode": time.perf_counter() - post}
    return record_of(prepared.item, mask, class_names, seconds)


def _ordered(futures: Iterator[Future], window: int) -> Iterator:
    """Results of futures in order, keeping at most `window` submitted ahead of the consumer."""
    pending: deque[Future] = deque()
    for future in futures:
        pending.append(future)
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class Pipeline:
    def __init__(self, runner: Runner, cfg: PredictConfig, output: Path, hw: tuple[int, int],
                 class_names: list[str], palette: np.ndarray | None, outcome: Outcome):
        self.runner, self.cfg, self.output, self.hw = runner, cfg, output, hw
        self.class_names, self.palette, self.outcome = class_names, palette, outcome
        self.mask_output = outputs_mask(runner)

    def run(self, items: Iterator[Item], total: int | None) -> None:
        window = 2 * self.cfg.batch_size
        with ThreadPoolExecutor(self.cfg.workers, "decode") as decoders, \
                ThreadPoolExecutor(self.cfg.workers, "encode") as encoders, make_progress() as progress:
            task = progress.add_task("predict", total=total, info="")
            uint8_input, keep = uses_uint8_input(self.runner), self.cfg.overlay
            decoded = _ordered((decoders.submit(prepare, item, self.hw, uint8_input, keep) for item in items), window)
            finishing: deque[Future] = deque()
            started = time.perf_counter()
            try:
                for batch in self._batches(decoded, progress, task):
                    for future in self._infer(batch, encoders):
                        finishing.append(future)
                    while len(finishing) > window or (finishing and finishing[0].done()):
                        self._collect(finishing.popleft(), progress, task, started)
                while finishing:
                    self._collect(finishing.popleft(), progress, task, started)
            finally:
                decoders.shutdown(cancel_futures=True)
                for future in finishing:  # Ctrl-C: what is being written completes and is recorded
                    if not future.cancel() and future.exception() is None:
                        self.outcome.records.append(future.result())
                self.outcome.wall_seconds = time.perf_counter() - started

    def _batches(self, decoded: Iterator[Prepared], progress, task) -> Iterator[list[Prepared]]:
        batch: list[Prepared] = []
        for prepared in decoded:
            if prepared.error is not None:
                self.outcome.skipped.append({"source": prepared.item.source, "reason": prepared.error})
                err_console.print(f"skipped: {prepared.error}", highlight=False, markup=False, soft_wrap=True)
                progress.advance(task)
                continue
            batch.append(prepared)
            if len(batch) == self.cfg.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _infer(self, batch: list[Prepared], encoders: ThreadPoolExecutor) -> list[Future]:
        start = time.perf_counter()
        outputs = infer_batch(self.runner, np.stack([p.model_input for p in batch]))
        seconds = (time.perf_counter() - start) / len(batch)
        futures = []
        for prepared, output in zip(batch, outputs):
            prepared.seconds["inference"] = seconds
            prepared.model_input = None
            futures.append(encoders.submit(finish, prepared, output, self.mask_output, self.output,
                                           self.class_names, self.palette, self.cfg.overlay))
        return futures

    def _collect(self, future: Future, progress, task, started: float) -> None:
        record = future.result()
        self.outcome.records.append(record)
        self.outcome.written += 1
        for stage in STAGES:
            self.outcome.seconds[stage] += record["seconds"].get(stage, 0.0)
        rate = self.outcome.written / max(time.perf_counter() - started, 1e-9)
        progress.update(task, advance=1, info=f"{rate:.1f} images/s")


def predict(run: RunDir, source: str, cfg: PredictConfig, output: Path | None = None) -> Outcome:
    """Masks of every image of SOURCE through the chosen variant into `output` (default RUN/predict/<name>/)."""
    run_cfg = run.load_config()
    variant, chosen_by = chosen_variant(run, cfg)
    require_artifacts([variant], run, cfg.device)
    output = Path(output) if output is not None else run.predict_dir(pixels.source_name(source))
    opened = open_source(source, cfg.max_megapixels or run_cfg.data.max_megapixels, exclude=output)
    class_names = list(run.read_checkpoint()["class_names"])
    palette = class_palette(run_cfg)
    outcome = Outcome(output, variant.label, source, chosen_by, input_hw(run_cfg.data.size))
    previous = _previous_records(output)
    todo = _not_done(opened.items, output, class_names, previous, cfg.overwrite, outcome)
    runner = build_runner(variant, RuntimeContext(run, cfg.device, cfg.threads))
    outcome.mask_output = outputs_mask(runner)
    try:
        Pipeline(runner, cfg, output, outcome.model_hw, class_names, palette, outcome).run(todo, opened.total)
    finally:
        runner.close()
        if output.is_dir():
            fileio.remove_stale_temps(output)
        _write_predictions(run, outcome, class_names)
    return outcome


def _not_done(items: Iterator[Item], output: Path, class_names: list[str], previous: dict, overwrite: bool,
              outcome: Outcome) -> Iterator[Item]:
    for item in items:
        if not overwrite and (output / item.mask).is_file():
            outcome.records.append(existing_record(item, output, class_names, previous))
            outcome.kept += 1
            continue
        yield item


def _previous_records(output: Path) -> dict:
    path = output / PREDICTIONS
    try:
        return {r["mask"]: r for r in fileio.read_json(path).get("images", [])} if path.is_file() else {}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}  # an unreadable old file: records are rebuilt from the masks


def _write_predictions(run: RunDir, outcome: Outcome, class_names: list[str]) -> None:
    if not outcome.records and not outcome.skipped:
        return
    resize = ("the graph outputs a mask at the model size: nearest-neighbour upsampling to the original size"
              if outcome.mask_output else
              "logits resized bilinearly (half-pixel centres) to the original size, then argmax")
    fileio.write_json(outcome.output / PREDICTIONS, {
        "run": str(run.path), "source": outcome.source, "variant": outcome.variant,
        "variant_chosen_by": outcome.chosen_by, "model_input_size": list(outcome.model_hw),
        "class_names": class_names, "original_size": resize,
        "images": sorted(outcome.records, key=lambda r: r["mask"]), "skipped": outcome.skipped,
        "seconds": {"wall": outcome.wall_seconds, **outcome.seconds}, "images_per_second": outcome.images_per_second,
    })
