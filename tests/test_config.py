import pytest

from segdeploy.core.config import (Config, apply_overrides, config_from_dict, config_to_toml, load_config,
                              parse_list)
from segdeploy.core.errors import ConfigError


def test_toml_round_trip(tmp_path):
    cfg = Config()
    cfg.model.name = "deeplabv3plus"
    cfg.train.lr = 3e-4
    cfg.data.max_images = 12
    cfg.bench.batch_sizes = [1, 2, 4]
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg))
    assert load_config(path) == cfg


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        load_config(path)


def test_unknown_section_and_wrong_type():
    with pytest.raises(ConfigError, match="bogus"):
        config_from_dict({"bogus": {}})
    with pytest.raises(ConfigError, match=r"train\.epochs.*expected int"):
        config_from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"bench\.batch_sizes\[1\]"):
        config_from_dict({"bench": {"batch_sizes": [1, "x"]}})


def test_int_promotes_to_float_and_optional_accepts_none():
    cfg = config_from_dict({"train": {"lr": 1, "max_steps": None}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps is None


def test_overrides_skip_none_and_do_not_mutate_base():
    base = Config()
    cfg = apply_overrides(base, {"train.epochs": 3, "train.lr": None, "model.encoder": "resnet34"})
    assert cfg.train.epochs == 3 and cfg.model.encoder == "resnet34"
    assert cfg.train.lr == base.train.lr
    assert base.train.epochs == 50 and base.model.encoder == "resnet18"


def test_parse_list():
    assert parse_list("1, 8,32", int) == [1, 8, 32]
    assert parse_list(None) is None
    with pytest.raises(ConfigError):
        parse_list("1,a", int)
