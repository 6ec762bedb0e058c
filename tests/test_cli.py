"""The CLI through Typer's CliRunner: happy path and one-line errors with exit code 2."""

import json
import re

import pytest
from typer.testing import CliRunner

from conftest import clone_run
from segdeploy.cli import app

runner = CliRunner()
TINY = ["--dataset", "synthetic", "--size", "64", "--max-images", "8", "--epochs", "1",
        "--batch-size", "4", "--device", "cpu", "--threads", "2"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def command_table(output: str) -> dict[str, str]:
    """The rows of the help's "Commands" panel: command -> the first line of its description."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if "Commands" in line and line.lstrip().startswith("╭"))
    rows = {}
    for line in lines[start + 1:]:
        if line.lstrip().startswith("╰"):
            break
        match = re.match(r"^│ (\S+)\s+(\S.*?)\s*│$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert registered == {"train", "eval", "report", "export", "parity", "bench", "predict", "deploy", "study",
                          "models"}
    table = command_table(result.output)
    assert set(table) == registered and all(table.values())  # every command with its description


def test_train_help_lists_every_registered_dataset_and_model():
    from segdeploy.data.registry import DATASETS
    from segdeploy.models.registry import MODELS

    text = " ".join(invoke("train", "--help").output.replace("│", " ").split())
    for name in [*DATASETS, *MODELS]:
        assert name in text


def test_chain_through_cli(tmp_path):
    run = tmp_path / "run"
    assert invoke("train", *TINY, "--output", run).exit_code == 0
    assert invoke("export", run).exit_code == 0
    result = invoke("parity", run, "--backends", "onnxruntime")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "parity.json").read_text())["results"][0]["passed"]
    # in this process: the subprocess per cell (bench's default) has its own tests in test_bench/test_robustness3
    result = invoke("bench", run, "--batch-sizes", "1", "--warmup", "1", "--iters", "2", "--warmup-window", "2",
                    "--max-warmup", "3", "--in-process")
    assert result.exit_code == 0, result.output
    assert (run / "bench.json").is_file()


def test_config_file_and_flags(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[train]\nepochs = 1\nlr = 0.001\n[data]\nsize = 64\nmax_images = 8\n')
    run = tmp_path / "run"
    result = invoke("--debug", "train", "--config", config, "--lr", "0.01", "--device", "cpu", "--output", run)
    assert result.exit_code == 0, result.output
    text = (run / "config.toml").read_text()
    assert "lr = 0.01" in text and "epochs = 1" in text


@pytest.mark.parametrize("args,needle", [
    (["train", "--dataset", "kvasir", "--data-root", "/no/such/dir"], "/no/such/dir"),
    (["train", "--model", "pspnet"], "pspnet"),
    (["train", "--encoder", "vgg17"], "vgg17"),
    (["train", "--size", "100"], "100"),
    (["parity", "/no/such/run"], "/no/such/run"),
])
def test_bad_input_is_one_line(args, needle):
    result = invoke(*args)
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2


def test_unknown_config_key_is_one_line(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[train]\nlearnin_rate = 0.1\n")
    result = invoke("train", "--config", config)
    assert result.exit_code == 2 and "learnin_rate" in result.output and "Traceback" not in result.output


def test_image_without_mask_and_class_out_of_range(tmp_path):
    from conftest import make_folder_dataset

    root = make_folder_dataset(tmp_path / "d", count=4, num_classes=4)
    result = invoke("train", "--dataset", "folder", "--data-root", root, "--num-classes", "3", "--size", "32",
                    "--output", tmp_path / "r")
    assert result.exit_code == 2 and "class id 3" in result.output and "img002" in result.output
    (root / "masks" / "img002.png").unlink()
    result = invoke("train", "--dataset", "folder", "--data-root", root, "--num-classes", "4", "--size", "32",
                    "--output", tmp_path / "r")
    assert result.exit_code == 2 and "img002" in result.output and "no mask" in result.output


def test_parity_before_export_says_what_to_run(trained_run, tmp_path):
    import shutil

    copy = clone_run(trained_run, tmp_path / "copy").path
    shutil.rmtree(copy / "export")  # links only: the shared run keeps its graphs
    result = invoke("parity", copy)
    assert result.exit_code == 2 and "segdeploy export" in result.output
