"""Shared fixtures: tiny configs, a tiny trained+exported run, generated dataset folders."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

# Before torch loads libgomp: the tests that ask for two threads (train.threads, bench and runner threads, and
# the processes they start) would otherwise busy-wait on the core the other xdist worker computes on (two
# 2-thread processes on 2 cores: 12.9 s each against 5.5-6.0 s with passive waiting, Zen 2).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch
from PIL import Image

from segdeploy.core.config import Config
from segdeploy.core.rundir import RunDir

# `make test` runs two pytest-xdist workers on two cores: one torch thread each (two each would spin against
# each other: +3 min of CPU over the suite); a serial `pytest` keeps two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

# The dataset cache of the whole session (subprocesses included) lives in a temporary folder, never in
# the user's cache directory.
_CACHE_DIR = tempfile.mkdtemp(prefix="segdeploy-test-cache-")
os.environ["SEGDEPLOY_CACHE"] = _CACHE_DIR
os.environ.pop("SEGDEPLOY_NO_CACHE", None)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


def cpu_feature_missing(feature: str) -> str | None:
    """Why this CPU (as the project reads it: core/env.py) lacks `feature`, in one uniform line; None if it
    has it. Features: bf16 (OpenVINO BF16 arithmetic), vnni (INT8 dot products without int16 saturation),
    avx512, amx. Tests that need one carry @pytest.mark.cpu_feature("bf16") or call this and assert what the
    CPU without it gives instead."""
    from segdeploy.core import env

    flags, isa = env.cpu_flags() or {}, env.effective_cpu_isa()
    facts = f"CPU ISA {isa}{', capped by ' + str(env.isa_caps()) if env.isa_caps() else ''}"
    if feature == "bf16":
        capabilities = env.openvino_capabilities() or ()
        has = "BF16" in capabilities
        facts = f"OpenVINO OPTIMIZATION_CAPABILITIES {', '.join(capabilities) or 'none'}"
    elif feature == "vnni":
        has = isa in ("amx", "avx512_vnni", "avx_vnni")
    elif feature == "avx512":
        has = isa in ("amx", "avx512_vnni", "avx512")
    elif feature == "amx":
        has = bool(flags.get("amx_int8")) and isa == "amx"
    else:
        raise ValueError(f"unknown CPU feature {feature!r}")
    return None if has else f"{feature}: this CPU has no {feature.upper()} arithmetic ({facts})"


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: OpenVINO is asked only where a selected test needs it
def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        for marker in item.iter_markers("cpu_feature"):
            reason = cpu_feature_missing(marker.args[0])
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (`pip install 'segdeploy[trt-cu12]'` or `[trt-cu13]`, matching torch's CUDA), not installed"))


SESSION_TEMP = "session-"  # prefix of the session fixtures' tmp_path_factory folders
_FAILED_MODULES: set[str] = set()


def pytest_runtest_logreport(report):
    if report.failed:
        _FAILED_MODULES.add(report.nodeid.split("::")[0])


@pytest.fixture(scope="module", autouse=True)
def _module_temp_removed(request, tmp_path_factory):
    """The folders a module's fixtures made with tmp_path_factory are removed when the module ends (pytest
    keeps them to the end of the session: 4.5 GB over the suite), unless one of its tests failed; the
    session fixtures' folders (SESSION_TEMP) stay to the end."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if request.node.nodeid.split("::")[0] in _FAILED_MODULES:
        return
    for path in set(base.iterdir()) - before:
        if not path.name.startswith(SESSION_TEMP):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _registries_unchanged():
    """A test (or a bench plugin it loads in-process) may register backends: drop them afterwards."""
    from segdeploy.runtime.variants import BACKENDS

    before = dict(BACKENDS.items())
    yield
    for name in [n for n in BACKENDS if n not in before]:
        del BACKENDS[name]


def tiny_config(**sections) -> Config:
    """A config that trains in seconds on 2 CPU cores: synthetic 64x64, U-Net R18, 1 epoch."""
    cfg = Config()
    cfg.data.dataset = "synthetic"
    cfg.data.size = 64
    cfg.data.synthetic_images = 40
    cfg.data.max_images = 16
    cfg.train.epochs = 1
    cfg.train.batch_size = 8
    cfg.train.device = "cpu"
    cfg.train.lr = 1e-3
    cfg.train.amp = False  # FP32: tests compare losses and metrics across runs at tight tolerances
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    return cfg


def built_once(tmp_path_factory, name: str, build: Callable[[Path], RunDir]) -> RunDir:
    """`build(folder)` for the session: under pytest-xdist by the first worker that asks, the others wait
    for it and share its (read-only) result, instead of each worker training and exporting its own."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(SESSION_TEMP + name))
    from filelock import FileLock

    folder = tmp_path_factory.getbasetemp().parent / f"shared-{name}"  # this session's, beside the workers'
    done = folder.with_suffix(".done")
    with FileLock(str(folder.with_suffix(".lock"))):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed building it left
            folder.mkdir()
            done.write_text(str(build(folder).path))
    return RunDir(Path(done.read_text()))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny U-Net trained for one epoch and exported to ONNX (shared by the session: read only)."""

    def build(folder: Path) -> RunDir:
        from segdeploy.export.onnx import export_run
        from segdeploy.training.loop import train

        # last.pt of the finished run keeps the weights only: no test resumes the shared run
        run = train(tiny_config(train={"keep_resume_state": False}), folder / "tiny")
        export_run(run)
        make_read_only(run.path)
        return run

    return built_once(tmp_path_factory, "runs", build)


@pytest.fixture(scope="session")
def graphs_run(trained_run, tmp_path_factory) -> RunDir:
    """The trained run with fp32, fp16 and int8 graphs (4 calibration images), shared by the session (read
    only): a clone linking the trained run's files, to which the fp16 and int8 graphs are added."""

    def build(folder: Path) -> RunDir:
        from segdeploy.core.config import ExportConfig
        from segdeploy.export.onnx import export_graphs

        run = clone_run(trained_run, folder / "run")
        export_graphs(run, ExportConfig(precisions=["fp32", "fp16", "int8"], calib_images=4))
        make_read_only(run.path)
        return run

    return built_once(tmp_path_factory, "graphs", build)


def make_read_only(folder: Path) -> None:
    """Every file under `folder` read-only (folders stay writable: commands may add results): a test that
    wrote through a link into the shared run would fail instead of changing it for the tests after it.
    A file takes the place of the OpenVINO compile cache (RUN/cache/), so the runners compile without one
    (as in any run folder they cannot write): its blobs are 57 MB per setting, kept to the session's end."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o444)
    (folder / "cache").write_text("no compile cache in the tests' shared runs (tests/conftest.py)\n")


def write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_folder_dataset(root: Path, count: int = 6, size: int = 48, num_classes: int = 2,
                        image_ext: str = ".png", mask_ext: str = ".png", seed: int = 0) -> Path:
    """images/ + masks/ with random RGB images and masks (binary 0/255 if num_classes == 2)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
        mask = np.zeros((size, size + 8), np.uint8)
        cls = 1 + i % (num_classes - 1)
        mask[size // 4: 3 * size // 4, size // 4: size // 2] = 255 if num_classes == 2 else cls
        write_image(root / "images" / f"img{i:03d}{image_ext}", image)
        write_image(root / "masks" / f"img{i:03d}{mask_ext}", mask)
    return root


def reexport_cheaply(config_text: str) -> str:
    """A run config whose next export uses the torchscript exporter (1.3 s for the tiny U-Net, torch.export
    10 s): for copies of the shared run, whose tests re-export for what happens around the export (units,
    hints, refusals), not for the exporter. The shared run's own graphs are torch.export's, the product's
    default; tests/test_pipeline.py, the model zoo contracts and SAM2's tests export with it."""
    if "\nexporter = " in config_text:  # a run that chose its exporter keeps it
        return config_text
    if "\n[export]\n" not in config_text:
        return config_text + '\n[export]\nexporter = "torchscript"\n'
    return config_text.replace("\n[export]\n", '\n[export]\nexporter = "torchscript"\n')


def clone_run(source: RunDir, target: Path, seed: int | None = None) -> RunDir:
    """A writable run directory sharing the trained run's checkpoints and graphs by symlink (read only: a
    command that writes one replaces the link, atomically); optionally another seed. Re-exports of the clone
    use the torchscript exporter (`reexport_cheaply`)."""
    target.mkdir(parents=True)
    text = reexport_cheaply(source.config_path.read_text())
    if seed is not None:
        text = re.sub(r"(?m)^seed = \d+$", f"seed = {seed}", text)
    (target / "config.toml").write_text(text)
    shutil.copy(source.history, target / "history.csv")
    for folder in ("checkpoints", "export"):
        (target / folder).mkdir()
        for path in (source.path / folder).iterdir():
            os.symlink(path.resolve(), target / folder / path.name)
    return RunDir(target)
