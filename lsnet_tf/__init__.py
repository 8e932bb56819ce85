"""lsnet_tf: L-SNet (ICIP 2021) in Keras 3 / TensorFlow.

Stages are folders: ``data`` (DICOM/NIfTI reading, TFRecords, targets, tf.data), ``ops`` (pure
tensor functions), ``layers`` (Keras layers), ``models``, ``losses``, ``metrics``, ``export``;
entry points are ``python -m lsnet_tf.prepare | validate | train``.

Importing the package imports no TensorFlow, and before TensorFlow is imported quiets its
start-up log and known third-party warnings (``lsnet_tf.console``; ``LSNET_VERBOSE=1`` shows
everything) and turns on its oneDNN CPU kernels unless ``TF_ENABLE_ONEDNN_OPTS`` says otherwise
(``lsnet_tf.machine.configure_cpu``).
"""
from lsnet_tf import console as _console
from lsnet_tf import machine as _machine

__version__ = "0.1.0"

_console.configure()
_machine.configure_cpu()
