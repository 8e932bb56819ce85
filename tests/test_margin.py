"""model.margin_reference: the margin m given in pixels of a reference slice (the paper's 512 x 512)
and scaled to data.image_size; model.input_margin is what every built model gets."""
import os

import pytest
from conftest import tiny_cfg

from lsnet_tf.config import ConfigError, ModelConfig, load_config
from lsnet_tf.models.build import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(*parts):
    return os.path.join(REPO, "configs", *parts)


@pytest.mark.parametrize("margin, reference, image_size, expected", [
    (15.0, 0, 128, 15.0),      # the default: input pixels, whatever the size
    (15.0, 0, 512, 15.0),
    (15.0, 512, 512, 15.0),    # the paper's slice size: unchanged
    (15.0, 512, 128, 3.75),    # 15 * 128 / 512
    (15.0, 512, 64, 1.875),    # 15 * 64 / 512
    (10.0, 256, 96, 3.75),     # 10 * 96 / 256
    (0.0, 512, 128, 0.0),
])
def test_input_margin_of_known_settings(margin, reference, image_size, expected):
    m = ModelConfig(margin=margin, margin_reference=reference)
    assert m.input_margin(image_size) == expected


def test_default_margin_is_unchanged():
    for cfg in (load_config(), load_config(config("default.yaml")),
                load_config(config("synthetic", "lsnet_unet.yaml"))):
        assert cfg.model.margin_reference == 0 and cfg.model.margin == 15.0
        assert cfg.model.input_margin(cfg.data.image_size) == 15.0
    pancreas = load_config(config("pancreas", "lsnet_unet.yaml"))
    assert pancreas.model.input_margin(pancreas.data.image_size) == 15.0


def test_scaled_synthetic_row():
    scaled = load_config(config("synthetic", "lsnet_unet_scaled.yaml"))
    plain = load_config(config("synthetic", "lsnet_unet.yaml"))
    model, size = scaled.model, scaled.data.image_size
    assert (model.margin, model.margin_reference, size) == (15.0, 512, 128)
    assert scaled.model.input_margin(scaled.data.image_size) == 3.75
    assert scaled.train.output_dir == "runs/synthetic/lsnet_unet_scaled"
    # Otherwise the L-SNet (U-Net) row.
    def same(c):
        return (c.model.architecture, c.model.family, c.model.width, c.loss, c.data,
                c.train.gamma, c.train.epochs, c.train.learning_rate)

    assert same(scaled) == same(plain)


@pytest.mark.parametrize("architecture", ["lsnet", "coarse_to_fine", "lnet_crop"])
def test_built_models_get_the_input_margin(architecture):
    # 15 px of a 512 px slice at the tiny models' 64 px input: 1.875 px.
    model = build_model(tiny_cfg(f"model.architecture={architecture}",
                                 "model.margin_reference=512"))
    assert model.margin == 1.875
    if architecture == "lsnet":
        assert model.rr.margin == 1.875
    default = build_model(tiny_cfg(f"model.architecture={architecture}"))
    assert default.margin == 15.0
    if architecture == "lsnet":
        assert default.rr.margin == 15.0


@pytest.mark.parametrize("value, message", [
    ("-512", "model.margin_reference must be 0 (model.margin in input pixels) or the size in "
             "pixels of the slice model.margin is given on (e.g. 512) (received -512)"),
    ("512.5", "'model.margin_reference' must be an integer, got 512.5"),
])
def test_bad_margin_reference_is_a_config_error(value, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"model.margin_reference={value}"])
    assert message in str(err.value)
