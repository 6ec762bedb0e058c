"""Standalone predictor of a segdeploy bundle: `python predict.py SOURCE --output DIR`.

SOURCE: an image file, a folder (recursive), a glob pattern, a .txt file listing paths or a video (needs
PyAV: pip install av). One class-index PNG mask per image at the image's original size, named and written as
`segdeploy predict` writes them. Needs numpy,
Pillow and the bundle's runtime (onnxruntime or openvino): never torch, never segdeploy. `pixels.py` beside
this file is segdeploy's own decode/resize/mask code (the bytes manifest.json records).

This file is a template that `segdeploy deploy` copies into the bundle as predict.py; it imports nothing of
segdeploy (the bundle runs without it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import pixels  # noqa: E402  (the bundle's copy of segdeploy/core/pixels.py)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest() -> dict:
    """manifest.json, after checking that the model and pixels.py are the files it records."""
    manifest = json.loads((HERE / "manifest.json").read_text())
    for name in (manifest["model_file"], "pixels.py"):
        if sha256(HERE / name) != manifest["files"][name]:
            sys.exit(f"error: {name} is not the file manifest.json records (sha256 differs): re-run segdeploy deploy")
    return manifest


class OnnxRuntimeModel:
    def __init__(self, path: Path, settings: dict, threads: int | None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        threads = threads or settings.get("intra_op_num_threads")
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), options, providers=settings["providers"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: batch})


class OpenVinoModel:
    def __init__(self, path: Path, settings: dict, threads: int | None):
        import openvino as ov

        properties = dict(settings["properties"])
        if threads:
            properties["INFERENCE_NUM_THREADS"] = str(threads)
        self.compiled = ov.Core().compile_model(str(path), settings.get("device", "CPU"), properties)
        self.request = self.compiled.create_infer_request()

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        self.request.infer({0: batch})
        return [np.array(self.request.get_output_tensor(i).data) for i in range(len(self.compiled.outputs))]


RUNTIMES = {"onnxruntime": OnnxRuntimeModel, "openvino": OpenVinoModel}


def model_input(images: np.ndarray, io: dict, manifest: dict) -> np.ndarray:
    """uint8 NHWC images at the model's size -> what the graph takes (the same preprocessing as segdeploy)."""
    if io["input_format"] == "uint8_nhwc":
        return np.ascontiguousarray(images, dtype=np.uint8)
    batch = pixels.normalize(images, manifest["mean"], manifest["std"])
    return batch.astype(np.dtype(io["inputs"][0]["dtype"]), copy=False)


def masks_at(output: np.ndarray, io: dict, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """The graph's first output -> one class-index mask per image at its original (height, width)."""
    if io["output_format"] == "mask":
        return [pixels.upsample_mask(mask, hw) for mask, hw in zip(output, sizes)]
    return [pixels.logits_to_mask(logits, hw) for logits, hw in zip(output, sizes)]


def sources(source: str, output: Path, max_megapixels: float):
    """(mask name, loader) of every image of SOURCE, named as `segdeploy predict` names them; files inside
    the output folder are left out."""
    if pixels.is_video(source):
        for index, frame in enumerate(pixels.video_frames(source), start=1):
            yield Path(pixels.frame_name(index)), lambda frame=frame: frame
        return
    inside = output.expanduser().resolve()
    paths = [p for p in pixels.list_sources(source) if not p.resolve().is_relative_to(inside)]
    if not paths:
        sys.exit(f"error: {source} holds no images")
    for path, name in zip(paths, pixels.output_names(paths, source)):
        yield name, lambda path=path: np.asarray(pixels.open_rgb(path, max_megapixels), dtype=np.uint8)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def palette_of(manifest: dict) -> np.ndarray | None:
    colours = json.loads((HERE / manifest["classes_file"]).read_text()).get("palette")
    return None if colours is None else np.asarray(colours, np.uint8)


def batches(args: argparse.Namespace, manifest: dict, counts: dict):
    """Lists of (mask path, image at the model size, original (height, width)); unreadable files skipped."""
    output, hw, batch = Path(args.output), tuple(manifest["input_hw"]), []
    limit = manifest.get("max_megapixels", pixels.DEFAULT_MAX_MEGAPIXELS)
    for name, load in sources(args.source, output, limit):
        if not args.overwrite and (output / name).is_file():
            counts["kept"] += 1
            continue
        try:
            image = load()
        except pixels.PixelError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            counts["skipped"] += 1
            continue
        batch.append((output / name, pixels.resize_rgb(image, hw), image.shape[:2]))
        if len(batch) == args.batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict(args: argparse.Namespace, manifest: dict) -> int:
    io, palette = manifest["io"], palette_of(manifest)
    model = RUNTIMES[manifest["runtime"]](HERE / manifest["model_file"], manifest["runtime_settings"], args.threads)
    counts, started = {"written": 0, "kept": 0, "skipped": 0}, time.perf_counter()
    try:
        for batch in batches(args, manifest, counts):
            outputs = model(model_input(np.stack([image for _, image, _ in batch]), io, manifest))
            for (path, _, _), mask in zip(batch, masks_at(outputs[0], io, [hw for _, _, hw in batch])):
                write_atomic(path, pixels.mask_png(mask, palette))
                counts["written"] += 1
    except pixels.PixelError as exc:
        sys.exit(f"error: {exc}")
    rate = counts["written"] / max(time.perf_counter() - started, 1e-9)
    print(f"{counts['written']} masks in {args.output} ({rate:.1f} images/s), {counts['kept']} already there, "
          f"{counts['skipped']} skipped")
    return 1 if counts["skipped"] else 0


def main(argv: list[str] | None = None) -> int:
    manifest = load_manifest()
    parser = argparse.ArgumentParser(description=f"Segment images with {manifest['variant']} "
                                     f"({manifest['precision']}), as measured by segdeploy.")
    parser.add_argument("source", help="an image, a folder, a glob pattern, a .txt list of paths or a video")
    parser.add_argument("--output", required=True, help="folder for the masks (PNG, class index per pixel)")
    parser.add_argument("--batch-size", type=int, default=manifest["batch_size"],
                        help=f"images per call [default: {manifest['batch_size']}, the batch that was measured]")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads [default: as measured]")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose mask exists")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return predict(args, manifest)


if __name__ == "__main__":
    sys.exit(main())
