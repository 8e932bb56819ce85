import pytest

from lsnet_tf.config import Config, ConfigError, load_config


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_validate_and_match_paper():
    cfg = load_config()
    assert cfg.model.margin == 15.0 and cfg.loss.tau == 0.5 and cfg.loss.dice_weight == 0.2
    assert cfg.train.epochs == 60 and cfg.train.lr_decay_epochs == 25 and cfg.train.gamma == 0.1


def test_yaml_and_set_overrides(tmp_path):
    path = write(tmp_path, "a.yaml", "train:\n  epochs: 3\nmodel:\n  width: 8\n")
    cfg = load_config(path, ["train.gamma=0", "data.synthetic.seed=5"])
    assert (cfg.train.epochs, cfg.model.width, cfg.train.gamma, cfg.data.synthetic.seed) == (3, 8, 0.0, 5)
    assert isinstance(cfg.train.gamma, float)


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "bad.yaml", "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.epoch"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load_config(None, ["nope.x=1"])


def test_type_and_range_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs' must be an integer"):
        load_config(None, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_config(None, ["data.image_size=100"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["epochs"])


def test_base_chain_is_a_small_diff(tmp_path):
    write(tmp_path, "base.yaml", "train:\n  epochs: 7\n  gamma: 0.5\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\ntrain:\n  gamma: 0.0\n")
    cfg = load_config(child)
    assert cfg.train.epochs == 7 and cfg.train.gamma == 0.0


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(None, ["train.epochs=2", "model.family=fcn"])
    cfg.save(str(tmp_path / "config.yaml"))
    assert load_config(str(tmp_path / "config.yaml")) == cfg
    assert Config().validate() == load_config()


def test_exponent_without_dot_is_a_number():
    assert load_config(None, ["train.learning_rate=2e-3"]).train.learning_rate == 0.002
