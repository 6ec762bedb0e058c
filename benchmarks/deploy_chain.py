"""The whole chain, from a dataset to a deployed model (issue 22's "Done when"), run through the CLI:

    train (Kvasir-SEG, U-Net R18, 128 px) -> export --precision fp32,int8 --deploy
    -> parity and bench over onnxruntime and openvino, plain and +deploy (bench also torch)
    -> deploy --triton -> the bundle's predict.py in a torch-free venv vs `segdeploy predict`

on the 120 validation images. Writes benchmarks/results/deploy_chain.json (every command, its exit code
and seconds; the deploy table; which masks matched byte for byte) and deploy_chain.md.

    python benchmarks/deploy_chain.py --output runs/deploy_chain [--epochs 3] [--max-train-images 120]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
KVASIR = Path("/work/shared/datasets/kvasir-seg")
BACKENDS = "onnxruntime,openvino,onnxruntime+deploy,openvino+deploy"


def segdeploy(log: list[dict], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    started = time.time()
    command = [sys.executable, "-m", "segdeploy", *args]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    log.append({"command": " ".join(["segdeploy", *args]), "exit_code": done.returncode,
                "seconds": round(time.time() - started, 1)})
    print(f"$ segdeploy {' '.join(args)}  -> {done.returncode} ({log[-1]['seconds']} s)", flush=True)
    if check and done.returncode != 0:
        sys.exit(f"failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def validation_list(run: Path, target: Path) -> list[Path]:
    """The run's validation images (its own seeded split) as a .txt list, a SOURCE kind predict reads."""
    from segdeploy.core.rundir import RunDir
    from segdeploy.data.dataset import match_folder, seeded_split

    data = RunDir.open(run).load_config().data
    root = Path(data.root)
    samples = seeded_split(match_folder(root / "images", root / "masks"), "val", data.val_fraction, data.split_seed)
    paths = [s.image for s in samples]
    target.write_text("".join(f"{p}\n" for p in paths))
    return paths


def torch_free_predict(bundle: Path, source: Path, output: Path, batch: int, threads: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    import offline_venv

    manifest = json.loads((bundle / "manifest.json").read_text())
    started = time.time()
    python = offline_venv.build(output.parent / "venv", ["numpy", "pillow", manifest["runtime"]])
    venv_seconds = time.time() - started
    torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    started = time.time()
    ran = subprocess.run([str(python), str(bundle / "predict.py"), str(source), "--output", str(output),
                          "--batch-size", str(batch), "--threads", str(threads)], capture_output=True, text=True)
    if ran.returncode != 0:
        sys.exit(f"the bundle's predict.py failed: {ran.stderr[-2000:]}")
    return {"venv_seconds": round(venv_seconds, 1), "predict_seconds": round(time.time() - started, 1),
            "import_torch_fails": torch.returncode != 0, "stdout": ran.stdout.strip()}


def compare(a: Path, b: Path) -> dict:
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*.png"))
    other = sorted(str(p.relative_to(b)) for p in b.rglob("*.png"))
    identical = [n for n in names if (b / n).is_file() and (a / n).read_bytes() == (b / n).read_bytes()]
    return {"masks_bundle": len(names), "masks_segdeploy_predict": len(other), "identical": len(identical),
            "different_or_missing": sorted(set(names) ^ set(other) | (set(names) - set(identical)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/deploy_chain")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-train-images", type=int, default=120, help="caps each split; 120 keeps all val images")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--max-warmup", type=int, default=10, help="on a loaded machine warm-up rarely gets stable")
    parser.add_argument("--reuse", action="store_true", help="keep the trained, exported and checked run if there")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    run, log = Path(args.output), []
    load = os.getloadavg()[0]
    reused = "train, export and parity: kept from an earlier call (--reuse)\n\n" if args.reuse else ""
    trained = args.reuse and (run / "checkpoints" / "best.pt").is_file()
    if not trained:
        segdeploy(log, "train", "--dataset", "kvasir", "--data-root", str(KVASIR), "--model", "unet", "--encoder", "resnet18",
                  "--size", "128", "--epochs", str(args.epochs), "--max-images", str(args.max_train_images),
                  "--device", "cpu", "--threads", str(args.threads), "--output", str(run), "--overwrite")
        segdeploy(log, "export", str(run), "--precision", "fp32,int8", "--deploy")
    if not (trained and (run / "parity.json").is_file()):
        segdeploy(log, "parity", str(run), "--backends", BACKENDS, "--precision", "fp32,int8",
                  "--threads", str(args.threads), check=False)  # exit 1: a variant missed its tolerance
    parity = json.loads((run / "parity.json").read_text())
    segdeploy(log, "bench", str(run), "--backends", "torch," + BACKENDS, "--precision", "fp32,int8",
              "--batch-sizes", args.batch_sizes, "--iters", str(args.iters), "--warmup", "2",
              "--max-warmup", str(args.max_warmup), "--threads", str(args.threads))
    deployed = segdeploy(log, "deploy", str(run), "--triton")
    source = run / "validation_images.txt"
    images = validation_list(run, source)
    predict_batch = int(json.loads((run / "deploy" / "manifest.json").read_text())["batch_size"])
    segdeploy(log, "predict", str(run), str(source), "--output", str(run / "chain" / "segdeploy_predict"),
              "--batch-size", str(predict_batch), "--threads", str(args.threads))
    standalone = torch_free_predict(run / "deploy", source, run / "chain" / "bundle_predict", predict_batch, args.threads)
    result = {"reused": bool(reused), "machine": "2 shared CPU cores (AMD EPYC, AVX-512), other helpers' work running",
              "load_average_at_start": load, "validation_images": len(images), "commands": log,
              "parity": [{k: r.get(k) for k in ("variant", "precision", "argmax_agreement", "miou", "miou_delta", "passed")}
                         for r in parity["results"]], "deploy_table": deployed.stdout,
              "manifest": json.loads((run / "deploy" / "manifest.json").read_text()),
              "bundle_predict": standalone,
              "masks": compare(run / "chain" / "bundle_predict", run / "chain" / "segdeploy_predict")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "deploy_chain.json").write_text(json.dumps(result, indent=2, default=str))
    masks = result["masks"]
    (RESULTS / "deploy_chain.md").write_text(
        f"# Deploy chain (benchmarks/deploy_chain.py)\n\nLoad average at start {load:.1f} on 2 shared cores.\n\n"
        + reused + "\n".join(f"- `{c['command']}`: exit {c['exit_code']}, {c['seconds']} s" for c in log)
        + f"\n\n```\n{deployed.stdout}\n```\n\nMasks of the {len(images)} validation images: {masks['identical']} of "
        f"{masks['masks_bundle']} byte-identical between the bundle's predict.py (torch-free venv: import torch "
        f"fails = {standalone['import_torch_fails']}) and `segdeploy predict`; differing or missing: "
        f"{masks['different_or_missing'] or 'none'}.\n")
    print(json.dumps(masks, indent=2))


if __name__ == "__main__":
    main()
