"""``python -m lsnet_tf.experiments``: see `lsnet_tf.experiments.cli`."""
import sys

from lsnet_tf.experiments.cli import main

sys.exit(main())
