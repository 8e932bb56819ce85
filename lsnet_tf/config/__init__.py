"""Experiment configuration: frozen dataclasses (``schema``) loaded from YAML (``loading``).

``from lsnet_tf.config import Config, load_config`` is the usual import; the two modules are
split by concern only.
"""
from lsnet_tf.config.loading import load_config, parse_override
from lsnet_tf.config.schema import (ARCHITECTURES, FAMILIES, ONE_STAGE_ARCHITECTURES, STRIDE,
                                    Config, ConfigError, DataConfig, ExportConfig, LossConfig,
                                    ModelConfig, SyntheticConfig, TrainConfig, check_positive_int)

__all__ = ["ARCHITECTURES", "FAMILIES", "ONE_STAGE_ARCHITECTURES", "STRIDE", "Config",
           "ConfigError", "DataConfig", "ExportConfig", "LossConfig", "ModelConfig",
           "SyntheticConfig", "TrainConfig", "check_positive_int", "load_config", "parse_override"]
