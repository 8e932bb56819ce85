"""lsnet_tf: L-SNet (ICIP 2021) in Keras 3 / TensorFlow.

Stages are folders: ``data`` (DICOM/NIfTI reading, TFRecords, targets, tf.data), ``ops`` (pure
tensor functions), ``layers`` (Keras layers), ``models``, ``losses``, ``metrics``, ``export``;
entry points are ``python -m lsnet_tf.prepare | validate | train``.

Importing the package imports no TensorFlow and changes nothing in the host process: no
environment variable, warning filter or logging setting. Only when this process is one of the
project's commands (``python -m lsnet_tf.<command>`` or ``python -m benchmarks``:
`lsnet_tf.utils.console.is_command`) does it set the commands' environment here, before the command's
module and TensorFlow are imported (`lsnet_tf.utils.console.command_environment`): a quiet console
(``LSNET_VERBOSE=1`` shows everything) and TensorFlow's oneDNN CPU kernels unless
``TF_ENABLE_ONEDNN_OPTS`` says otherwise.
"""
from lsnet_tf.utils import console as _console

__version__ = "0.1.0"

# The Python API (`lsnet_tf.api`): ``lsnet_tf.load_config``, ``build_model``, ``train_model``,
# ``load_predictor``, ``read_volume``, ``predict_volume``; resolved on first use, so that
# importing the package stays free of TensorFlow.
_API = ("load_config", "build_model", "train_model", "load_predictor", "read_volume",
        "predict_volume")


def __getattr__(name):
    if name in _API:
        from lsnet_tf import api

        return getattr(api, name)
    raise AttributeError(f"module 'lsnet_tf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))

if _console.is_command():
    _console.command_environment()
