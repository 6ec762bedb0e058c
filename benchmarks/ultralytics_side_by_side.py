"""segdeploy against Ultralytics 8.4's `semantic` task on Kvasir-SEG (issue 23): same seeded 880/120 split,
128 px, batch 16, one thread each, both trainers started together for the same wall-clock budget, scored by
ONE scorer (benchmarks/ultralytics_sbs_eval.py) on the 120 validation masks.

The separate environment (`setup`): a venv at --venv (default /work/ulvenv, outside the repo) made from the
same base python, with a `.pth` file that appends the project venv's site-packages to its path, so it reuses
torch/torchvision/numpy/onnx/openvino from there instead of downloading a second multi-GB torch; into the new
venv's own site-packages go only `ultralytics==8.4.190` (`--no-deps`) and the small packages it imports that
the project lacks. Nothing is installed into the project's venv: `setup` compares its `pip list` before and
after and fails if it changed. Ultralytics runs offline (YOLO_OFFLINE, YOLO_AUTOINSTALL=false, plots off,
no pretrained weights, amp off), so it fetches no weights, fonts or AMP-check assets.

    P=.venv/bin/python; B=benchmarks/ultralytics_side_by_side.py; W=/work/ulwork
    $P $B setup --venv /work/ulvenv
    $P $B split --data ../shared/datasets/kvasir-seg --out $W/data
    $P $B run --minutes 25 --data $W/data --out $W/run --config studies/kvasir_efficient.toml \
        --study-run unet-mnv4s-w025-128 -- --no-amp     # the committed results' recipe (FP32 like Ultralytics)
    $P benchmarks/ultralytics_sbs_eval.py score   --data $W/data --out $W/run
    $P benchmarks/ultralytics_sbs_eval.py latency --out $W/run
    $P benchmarks/ultralytics_sbs_eval.py report  --out $W/run
    # -> benchmarks/results/ultralytics_side_by_side.{json,md}

Ultralytics' layout (SemanticDataset, chosen when the yaml has `masks_dir`): ROOT/images/{train,val}/*.jpg,
ROOT/masks/{train,val}/<same stem>.png holding class ids (0 background, 1 polyp, 255 ignore), and a yaml with
path/train/val/masks_dir/names. The Kvasir JPEG masks are decoded with segdeploy's own `binary_mask`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "benchmarks" / "ultralytics_sbs_child.py"
ULTRALYTICS = "ultralytics==8.4.190"
# What ultralytics imports that the project's venv does not have (installed --no-deps into the separate venv).
EXTRA = ["opencv-python-headless", "polars", "polars-runtime-32", "ultralytics-thop", "requests", "certifi",
         "charset-normalizer", "urllib3", "idna", "onnxslim", "ultralytics-platform", "nvidia-ml-py"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false"}


def _pip_list(python: str) -> str:
    return subprocess.run([python, "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True,
                          text=True).stdout


def setup(venv: Path) -> None:
    """The separate venv: project site-packages via .pth, ultralytics + small extras --no-deps into its own."""
    import site
    import sysconfig

    before = _pip_list(sys.executable)
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    project = site.getsitepackages()[0] if site.getsitepackages() else sysconfig.get_paths()["purelib"]
    (Path(own) / "zz_segdeploy_venv.pth").write_text(f"{Path(project).resolve()}\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", ULTRALYTICS, *EXTRA], check=True)
    check = subprocess.run([python, "-c", "import ultralytics, cv2, polars, requests; print(ultralytics.__version__)"],
                           check=True, capture_output=True, text=True,
                           env={**os.environ, **ONE_THREAD, "YOLO_CONFIG_DIR": str(venv / "ultralytics-config")})
    if _pip_list(sys.executable) != before:
        raise SystemExit("setup changed the project's venv (pip list differs): undo it before any run")
    print(f"ultralytics {check.stdout.strip()} in {venv}; the project's venv is unchanged")


def split(data: Path, out: Path, max_images: int | None) -> None:
    """segdeploy's seeded Kvasir split (default DataConfig) in Ultralytics' semantic layout + yaml + val list."""
    import numpy as np
    from PIL import Image

    from segdeploy.core.config import DataConfig
    from segdeploy.data.dataset import match_folder, seeded_split
    from segdeploy.data.decode import binary_mask

    cfg = DataConfig()
    samples = match_folder(data / "images", data / "masks")
    lists = {}
    for part in ("train", "val"):
        chosen = seeded_split(samples, part, cfg.val_fraction, cfg.split_seed)[:max_images]
        for kind in ("images", "masks"):
            (out / kind / part).mkdir(parents=True, exist_ok=True)
        for sample in chosen:
            shutil.copyfile(sample.image, out / "images" / part / sample.image.name)
            with Image.open(sample.mask) as mask:
                index = np.asarray(binary_mask(mask), np.uint8)
            Image.fromarray(index).save(out / "masks" / part / f"{sample.image.stem}.png")
        lists[part] = [s.image.stem for s in chosen]
        (out / f"{part}.txt").write_text("\n".join(lists[part]) + "\n")
    (out / "kvasir.yaml").write_text(f"path: {out.resolve()}\ntrain: images/train\nval: images/val\n"
                                     "masks_dir: masks\nnames:\n  0: background\n  1: polyp\n")
    (out / "split.json").write_text(json.dumps({"source": str(data.resolve()), "val_fraction": cfg.val_fraction,
                                                "split_seed": cfg.split_seed, **lists}, indent=2))
    print(f"{len(lists['train'])} train / {len(lists['val'])} val -> {out}")


def ultralytics_command(venv: Path, data: Path, out: Path, minutes: float, max_epochs: int) -> list[str]:
    return [str(venv / "bin" / "python"), str(CHILD), "train", str(data / "kvasir.yaml"), str(out / "ultralytics"),
            str(minutes), str(max_epochs)]


def train_config(config: Path, run_name: str | None, out: Path) -> Path:
    """A plain `segdeploy train` config as is; a study file's run (`run_name`, default its first [[runs]])
    written out as one, since `train --config` takes no [study] tables."""
    from segdeploy.core.config import config_to_toml, read_toml
    from segdeploy.study.plan import load_study

    if "study" not in read_toml(config):
        return config
    runs = load_study(config, output=out / "study").runs
    chosen = [r for r in runs if run_name in (None, r.name, r.config_name)]
    if not chosen:
        raise SystemExit(f"{config} has no run {run_name!r} (runs: {', '.join(r.name for r in runs)})")
    path = out / "segdeploy" / f"{chosen[0].name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_to_toml(chosen[0].cfg))
    return path


def segdeploy_command(data: Path, out: Path, minutes: float, max_epochs: int, config: Path | None,
                      extra: list[str]) -> list[str]:
    """`segdeploy train` on the same images: the rebuilt folder's images/ + masks/ per split (ROOT/{train,val}
    would need renaming), so it reads the original Kvasir root through `split.json`'s source instead."""
    split_info = json.loads((data / "split.json").read_text())
    source = split_info["source"]
    if config:
        from segdeploy.core.config import load_config

        cfg = load_config(config).data
        if (cfg.val_fraction, cfg.split_seed) != (split_info["val_fraction"], split_info["split_seed"]):
            raise SystemExit(f"{config}: val_fraction/split_seed {cfg.val_fraction}/{cfg.split_seed} differ from "
                             f"the split's {split_info['val_fraction']}/{split_info['split_seed']}")
    command = [sys.executable, "-m", "segdeploy", "train", "--dataset", "kvasir", "--data-root", source,
               "--size", "128", "--batch-size", "16", "--time", f"{minutes / 60:.6f}", "--epochs", str(max_epochs),
               "--threads", "1", "--device", "cpu", "--output", str(out / "segdeploy" / "run"), "--overwrite"]
    if config:
        command[4:4] = ["--config", str(config)]
    return command + extra


def _start(command: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(ROOT)}
    print(" ".join(command))
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def run_trainers(args: argparse.Namespace, which: tuple[str, ...]) -> None:
    """Start the chosen trainers together and wait for both; each one's wall clock lands in OUT/<tool>/."""
    jobs = {}
    if "ultralytics" in which:
        jobs["ultralytics"] = ultralytics_command(args.venv, args.data, args.out, args.minutes, args.max_epochs)
    if "segdeploy" in which:
        config = train_config(args.config, args.study_run, args.out) if args.config else None
        jobs["segdeploy"] = segdeploy_command(args.data, args.out, args.minutes, args.max_epochs, config, args.extra)
    start = time.time()
    procs = {name: _start(cmd, args.out / name / "train.log") for name, cmd in jobs.items()}
    codes = {name: proc.wait() for name, proc in procs.items()}
    wall = time.time() - start
    for name in procs:
        (args.out / name / "wall.json").write_text(json.dumps({"command": jobs[name], "rc": codes[name],
                                                               "wall_s": wall, "minutes": args.minutes}))
    print(json.dumps({"rc": codes, "wall_s": round(wall, 1)}))
    if any(codes.values()):
        raise SystemExit(f"a trainer failed: {codes} (logs: {args.out}/<tool>/train.log)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup").add_argument("--venv", type=Path, default=Path("/work/ulvenv"))
    p = sub.add_parser("split")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-images", type=int, default=None, help="smoke tests: at most this many per split")
    for name in ("train-ultralytics", "train-segdeploy", "run"):
        p = sub.add_parser(name, help="extra arguments after -- go to segdeploy train (e.g. --model, --encoder)")
        p.add_argument("--minutes", type=float, required=True)
        p.add_argument("--data", type=Path, required=True, help="the folder `split` wrote")
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--venv", type=Path, default=Path("/work/ulvenv"))
        p.add_argument("--config", type=Path, default=ROOT / "studies" / "kvasir_efficient.toml")
        p.add_argument("--study-run", default=None, help="which [[runs]] of a study --config (default: the first)")
        p.add_argument("--max-epochs", type=int, default=1000, help="the most epochs the budget may fit")
        p.add_argument("extra", nargs="*")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "setup":
        setup(args.venv)
    elif args.command == "split":
        split(args.data, args.out, args.max_images)
    else:
        which = {"train-ultralytics": ("ultralytics",), "train-segdeploy": ("segdeploy",),
                 "run": ("ultralytics", "segdeploy")}[args.command]
        run_trainers(args, which)


if __name__ == "__main__":
    main()
