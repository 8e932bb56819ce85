"""Train L-SNet: ``python -m lsnet_tf.train [--config configs/NAME.yaml] [--set key=value ...]``.

With no arguments it trains the default configuration on the synthetic dataset (generated once
into ``cache/synthetic``). Outputs go to ``train.output_dir``:

- ``config.yaml``: the resolved config;
- ``checkpoints/``: a checkpoint per epoch; the same command again (after a crash or a kill)
  resumes from the latest readable one;
- ``workers/<task>/checkpoints/``: with several workers, the other workers' copies;
- ``logs/``: TensorBoard scalars and images (``tensorboard --logdir runs``);
- ``eval.json``: the final evaluation on the validation fold;
- and the SavedModel in ``export.dir/export.name/export.version``.

Failures (``train.on_nonfinite``, ``data.on_corrupt``) end with ``error: ...`` and exit status 1;
a config that cannot be read, or a ``data.dataset`` that is not a prepared dataset, with exit
status 2.

Guide: docs/training.md (configs, resuming, several devices and workers, failure behaviour).
"""
from __future__ import annotations

import argparse
import os
import sys

from lsnet_tf.config import ConfigError, load_config
from lsnet_tf.data import records
from lsnet_tf.training import session


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsnet_tf.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML experiment config (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config or _default_config(), args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from lsnet_tf.training.callbacks import CheckpointError  # Keras: after the config is read
    from lsnet_tf.training.multi_worker import ClusterError
    from lsnet_tf.training.nonfinite import NonFiniteLossError

    try:
        session.run(cfg)
    except records.DatasetError as e:  # data.dataset is not a prepared dataset
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, records.CorruptShardError, CheckpointError, ClusterError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _default_config():
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.yaml")
    return here if os.path.isfile(here) else None


if __name__ == "__main__":
    sys.exit(main())
