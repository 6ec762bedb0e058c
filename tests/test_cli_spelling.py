"""One spelling per concept: --backends and --precision lists everywhere, --max-images, --auto-max-batch,
--plugin on eval and parity, device `auto` everywhere, help texts from the registries; the old spellings
still work for one release and print a one-line note."""

import json
import textwrap

import pytest
from typer.testing import CliRunner

from conftest import clone_run
from segdeploy.cli import app
from segdeploy.cli.common import DEPRECATED_FLAGS
from segdeploy.core.config import Config, config_from_dict


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def flat(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


@pytest.fixture
def run_copy(trained_run, tmp_path):
    return clone_run(trained_run, tmp_path / "run").path


# A backend from outside the package: the torch runner under another name (the test double of a new runtime).
PLUGIN = textwrap.dedent('''
    from segdeploy.runtime.variants import BACKENDS, BackendSpec

    BACKENDS["plugin-torch"] = BackendSpec(build=BACKENDS["torch"].build, description="torch, from a plugin",
                                           reads_graph=False, size_mb=lambda variant, run: None)
''')


def test_eval_takes_a_list_and_writes_one_evaluation_per_variant(run_copy):
    result = invoke("eval", run_copy, "--backends", "torch,onnxruntime", "--max-images", 2, "--no-figures")
    assert result.exit_code == 0, result.output
    for label in ("torch-fp32-synthetic-val", "onnxruntime-fp32-synthetic-val"):
        assert json.loads((run_copy / "eval" / label / "metrics.json").read_text())["images"] == 2
    assert "deprecated" not in result.output


def test_deprecated_eval_backend_still_works_with_a_note(run_copy):
    result = invoke("eval", run_copy, "--backend", "onnxruntime", "--max-images", 2, "--no-figures")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert notes == ["note: --backend is deprecated and goes in the next release; use --backends"]
    assert (run_copy / "eval" / "onnxruntime-fp32-synthetic-val" / "metrics.json").is_file()
    result = invoke("eval", run_copy, "--backend", "torch", "--backends", "torch")
    assert result.exit_code == 2 and "give only --backends" in result.output


@pytest.mark.parametrize("old, new, value, setting", [
    ("--val-images", "--max-images", 0, "bench.max_images must be at least 1, got 0"),
    ("--max-batch", "--auto-max-batch", 0, "bench.auto_max_batch must be at least 1, got 0"),
])
def test_deprecated_bench_flags_reach_the_new_setting(run_copy, old, new, value, setting):
    """The old spelling's value lands in the renamed setting (its range check names it) after the note."""
    result = invoke("bench", run_copy, old, value)
    assert result.exit_code == 2
    assert f"note: {old} is deprecated and goes in the next release; use {new}" in result.output
    assert setting in flat(result.output)
    assert setting in flat(invoke("bench", run_copy, new, value).output)


def test_every_deprecated_flag_is_hidden_from_help_and_its_replacement_shown():
    for old, new in DEPRECATED_FLAGS.items():
        command, flag = old.split()
        text = flat(invoke(command, "--help").output)
        assert new in text and f"{flag} " not in text.replace(f"{flag}-", "")


def test_plugin_backend_is_checkable_not_only_timable(run_copy, tmp_path):
    plugin = tmp_path / "plugin_backend.py"
    plugin.write_text(PLUGIN)
    result = invoke("parity", run_copy, "--backends", "plugin-torch", "--max-images", 2, "--plugin", plugin)
    assert result.exit_code == 0, result.output
    row = json.loads((run_copy / "parity.json").read_text())["results"][0]
    assert row["variant"] == "plugin-torch" and row["argmax_agreement"] == 1.0
    result = invoke("eval", run_copy, "--backends", "plugin-torch", "--max-images", 2, "--no-figures",
                    "--plugin", plugin)
    assert result.exit_code == 0, result.output
    assert (run_copy / "eval" / "plugin-torch-fp32-synthetic-val" / "metrics.json").is_file()


def test_one_default_device_rule():
    cfg = Config()
    assert {cfg.train.device, cfg.eval.device, cfg.parity.device, cfg.bench.device} == {"auto"}
    for command in ("train", "eval", "parity", "bench"):
        assert "auto (CUDA when torch sees a GPU, else the CPU)" in flat(invoke(command, "--help").output)


def test_earlier_config_keys_read_under_their_one_spelling():
    """Run directories and study files written before keep working."""
    cfg = config_from_dict({"eval": {"backend": "onnxruntime", "precision": "fp16"},
                            "bench": {"val_images": 3, "max_batch": 64}})
    assert (cfg.eval.backends, cfg.eval.precisions) == (["onnxruntime"], ["fp16"])
    assert (cfg.bench.max_images, cfg.bench.auto_max_batch) == (3, 64)


def test_help_lists_the_registries():
    from segdeploy.data.augment import AUGMENTATIONS
    from segdeploy.data.registry import DATASETS
    from segdeploy.models.registry import MODELS
    from segdeploy.runtime.variants import BACKENDS, PRESETS
    from segdeploy.training.losses import LOSSES
    from segdeploy.training.optimizers import OPTIMIZERS, SCHEDULERS

    train = flat(invoke("train", "--help").output)
    for name in [*DATASETS, *MODELS, *AUGMENTATIONS, *LOSSES, *OPTIMIZERS, *SCHEDULERS,
                 *(spec.encoder_help for _, spec in MODELS.items())]:
        assert name in train, name
    for command in ("eval", "parity", "bench"):
        text = flat(invoke(command, "--help").output).replace(" ", "")
        for name, spec in BACKENDS.items():
            assert name in text and all(f"+{m}" in text for m in spec.modifiers), (command, name)
        assert all(preset in text for preset in PRESETS)


@pytest.mark.parametrize("args, message", [
    (["export", "{run}", "--opt-batch", "1,x"], "--opt-batch must be comma-separated integers, got '1,x'"),
    (["export", "{run}", "--opt-batch", "auto"], "--opt-batch must be comma-separated integers, got 'auto'"),
    (["export", "{run}", "--opt-batch", "0"], "batch sizes must be integers >= 1, got '0'"),
    (["bench", "{run}", "--batch-sizes", "1,x"], "--batch-sizes must be comma-separated integers or 'auto', got '1,x'"),
])
def test_batch_size_lists_have_one_parser(run_copy, args, message):
    result = invoke(*[str(run_copy) if a == "{run}" else a for a in args])
    assert result.exit_code == 2 and message in flat(result.output)
