"""lsnet_tf: L-SNet (ICIP 2021) in Keras 3 / TensorFlow.

Stages are folders: ``data`` (DICOM/NIfTI reading, TFRecords, targets, tf.data), ``ops`` (pure
tensor functions), ``layers`` (Keras layers), ``models``, ``losses``, ``metrics``, ``export``;
entry points are ``python -m lsnet_tf.prepare | validate | train``.

Importing the package imports no TensorFlow and changes nothing in the host process: no
environment variable, warning filter or logging setting. Only when this process is one of the
project's commands (``python -m lsnet_tf.<command>`` or ``python -m benchmarks``:
`lsnet_tf.console.is_command`) does it set the commands' environment here, before the command's
module and TensorFlow are imported (`lsnet_tf.console.command_environment`): a quiet console
(``LSNET_VERBOSE=1`` shows everything) and TensorFlow's oneDNN CPU kernels unless
``TF_ENABLE_ONEDNN_OPTS`` says otherwise.
"""
from lsnet_tf import console as _console

__version__ = "0.1.0"

if _console.is_command():
    _console.command_environment()
