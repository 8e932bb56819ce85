"""lsnet_tf: L-SNet (ICIP 2021) in Keras 3 / TensorFlow.

Stages are folders: ``data`` (DICOM/NIfTI reading, TFRecords, targets, tf.data), ``ops`` (pure
tensor functions), ``layers`` (Keras layers), ``models``, ``losses``, ``metrics``, ``export``;
entry points are ``python -m lsnet_tf.prepare | validate | train``.

Importing the package imports no TensorFlow, and quiets TensorFlow's start-up log and known
third-party warnings before TensorFlow is imported (``lsnet_tf.console``; ``LSNET_VERBOSE=1``
shows everything).
"""
from lsnet_tf import console as _console

__version__ = "0.1.0"

_console.configure()
