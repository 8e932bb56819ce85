"""``python -m lsnet_tf.export``: see `lsnet_tf.export.cli`."""
import sys

from lsnet_tf.export.cli import main

sys.exit(main())
