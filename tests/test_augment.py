"""Augmentation presets: image and mask stay aligned, void stays void, draws are seeded per sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from segdeploy.cli import app
from segdeploy.core.config import DataConfig, load_config
from segdeploy.core.errors import ConfigError
from segdeploy.data.augment import AUGMENTATIONS, make_augmentation
from segdeploy.data.registry import build_dataset

# class 0 red, 1 green, 2 blue; a void square is drawn white in the image
COLORS = np.array([[220, 20, 20], [20, 220, 20], [20, 20, 220]], np.uint8)
SIZE = 64


def striped_sample() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, 20:40] = 1
    mask[40:, :] = 2
    mask[8:24, 44:60] = 255
    image = np.where(mask[..., None] == 255, 255, COLORS[np.minimum(mask, 2)]).astype(np.uint8)
    return image, mask


def interior(mask: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood carries one label (interpolation cannot have mixed them)."""
    padded = np.pad(mask.astype(np.int32), radius, mode="edge")
    same = np.ones(mask.shape, bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            same &= padded[radius + dy: radius + dy + mask.shape[0], radius + dx: radius + dx + mask.shape[1]] == mask
    return same


@pytest.mark.parametrize("preset", ["flip", "standard", "strong"])
def test_image_and_mask_stay_aligned_and_void_stays_void(preset):
    image, mask = striped_sample()
    augment = make_augmentation(preset, (SIZE, SIZE))
    moved = 0
    for seed in range(12):
        out_image, out_mask = augment(image, mask, seed)
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert out_mask.shape == mask.shape and out_mask.dtype == np.uint8
        assert set(np.unique(out_mask)) <= {0, 1, 2, 255}  # nearest: no blended labels
        inside = interior(out_mask)
        labelled = inside & (out_mask != 255)
        # the image's dominant colour channel is the class of the mask at that pixel (colour jitter
        # keeps the dominant channel; bilinear blending only touches edges, which `interior` leaves out)
        assert (out_image[labelled].argmax(1) == out_mask[labelled]).all(), (preset, seed)
        # the void square stays void: where the image still shows it (white), the mask is void
        white = inside & (out_image.min(2) > 150)
        assert (out_mask[white] == 255).all(), (preset, seed)
        moved += not np.array_equal(out_mask, mask)
    assert moved >= 4  # the transforms do something


def test_scale_and_rotation_pad_with_void_not_with_a_class():
    image, mask = striped_sample()
    mask[:] = 1  # no void in the input: any void in the output comes from padding
    augment = make_augmentation("strong", (SIZE, SIZE))
    padded = 0
    for seed in range(20):
        out_image, out_mask = augment(image, mask, seed)
        assert set(np.unique(out_mask)) <= {1, 255}
        padded += (out_mask == 255).any()
    assert padded >= 5  # shrinking and rotating leave uncovered corners, which are void


def test_draws_depend_on_seed_epoch_and_index_only_and_leave_the_global_rng_alone():
    cfg = DataConfig(dataset="synthetic", size=32, synthetic_images=12, augment="standard")
    dataset = build_dataset(cfg, "train")
    dataset.set_epoch(1, seed=5)
    state = torch.get_rng_state()
    first = [dataset[i] for i in range(4)]
    assert torch.equal(torch.get_rng_state(), state)
    again = build_dataset(cfg, "train")
    again.set_epoch(1, seed=5)
    for i in (3, 0, 2, 1):  # any order, a fresh dataset: the same samples
        assert torch.equal(again[i][0], first[i][0]) and torch.equal(again[i][1], first[i][1])
    again.set_epoch(2, seed=5)
    assert any(not torch.equal(again[i][1], first[i][1]) or not torch.equal(again[i][0], first[i][0])
               for i in range(4))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    images = torch.cat([batch[0] for batch in loader])
    assert torch.equal(images[:4], torch.stack([x for x, _ in first]))  # worker processes draw the same


def test_validation_and_none_are_not_augmented():
    cfg = DataConfig(dataset="synthetic", size=32, synthetic_images=12, augment="strong")
    assert build_dataset(cfg, "val").transform is None
    cfg.augment = "none"
    plain = build_dataset(cfg, "train")
    assert plain.transform is None
    assert set(AUGMENTATIONS) >= {"none", "flip", "standard"}


def test_preset_from_cli_and_toml_and_old_boolean(tmp_path):
    result = CliRunner().invoke(app, ["train", "--augment", "sideways", "--output", str(tmp_path / "r")])
    assert result.exit_code == 2 and "unknown augmentation preset 'sideways'" in result.output
    assert "standard" in result.output
    (tmp_path / "old.toml").write_text("[data]\naugment = true\n")
    assert load_config(tmp_path / "old.toml").data.augment == "flip"  # what `augment = true` meant
    (tmp_path / "new.toml").write_text('[data]\naugment = "strong"\n')
    assert load_config(tmp_path / "new.toml").data.augment == "strong"
    with pytest.raises(ConfigError, match="augmentation preset"):
        build_dataset(DataConfig(dataset="synthetic", size=32, augment="bogus"), "train")


def test_training_with_flip_records_the_preset(tmp_path):
    from segdeploy.training.loop import train

    run = train(tiny_config(data={"augment": "flip"}, train={"max_steps": 1}), tmp_path / "run")
    assert run.load_config().data.augment == "flip"
