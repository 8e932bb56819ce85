"""``python -m lsnet_tf.experiments``: see `lsnet_tf.experiments.cli`."""
import sys

from lsnet_tf.experiments.cli import main, stop_on_sigterm

stop_on_sigterm()
sys.exit(main())
