"""A quiet console: our own lines and progress bars, third-party start-up noise only on request.

Importing ``lsnet_tf`` calls `configure`, so every command (train, predict, export, prepare,
validate, experiments, evaluate, benchmarks) starts quiet:

- TensorFlow's C++ log (``TF_CPP_MIN_LOG_LEVEL``) is set to 3 (fatal only) before TensorFlow is
  imported: no CUDA/cuDNN/cuFFT/cuBLAS factory lines, no "Could not find cuda drivers", no
  "TF-TRT Warning: Could not find TensorRT", no oneDNN or CPU-instruction notes, no "Local
  rendezvous is aborting" at the end of a dataset. Errors still reach the user as the Python
  exceptions TensorFlow raises, with their messages.
- Python warnings that third-party packages raise on every start and that say nothing about this
  project (`KNOWN_WARNINGS`) are ignored. Warnings raised because of how this project calls a
  library are not filtered.
- Native lines of the TFLite converter and of LiteRT (`NATIVE_NOISE`: "Created TensorFlow Lite
  XNNPACK delegate for CPU", absl's "All log messages before absl::InitializeLog()", the
  converter's "Ignored output_format", the int8 quantizer's "fully_quantize: 0, ...") are held
  back by `native_stderr` around the calls that print them; any other line written meanwhile
  still comes out, and all of them on an error.

``LSNET_VERBOSE=1`` (or true/yes/on) turns all of this off: TensorFlow's own default log level
and every warning come back. A ``TF_CPP_MIN_LOG_LEVEL`` the user has set is kept as it is, and so
are warning filters given with ``python -W`` or ``PYTHONWARNINGS``.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings

__all__ = ["VERBOSE_ENV", "QUIET_TF_CPP_MIN_LOG_LEVEL", "KNOWN_WARNINGS", "NATIVE_NOISE",
           "verbose", "configure", "native_stderr"]

VERBOSE_ENV = "LSNET_VERBOSE"
QUIET_TF_CPP_MIN_LOG_LEVEL = "3"
_TRUE = ("1", "true", "yes", "on")

# (category, module regex, message regex) of third-party warnings that every run raises.
KNOWN_WARNINGS = (
    # TensorFlow imports googleapiclient (the GCE cluster resolver), whose google.api_core
    # warns on Python 3.11 about its support schedule.
    (FutureWarning, r"google\.api_core", r"You are using a Python version"),
)

# Native (C++) lines known to say nothing to a user; held back by `native_stderr`.
NATIVE_NOISE = tuple(re.compile(p) for p in (
    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.\s*$",
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR\s*$",
    r"^[IW]\d{4} [\d:.]+ +\d+ tf_tfl_flatbuffer_helpers\.cc:\d+\] Ignored "
    r"(output_format|drop_control_dependency)\.\s*$",
    # the int8 quantizer, once per quantization pass
    r"^fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, "
    r"output_inference_type: \w+\s*$",
))


def verbose(environ=None) -> bool:
    """Whether ``LSNET_VERBOSE`` asks for everything (``1``, ``true``, ``yes`` or ``on``)."""
    environ = os.environ if environ is None else environ
    return environ.get(VERBOSE_ENV, "").strip().lower() in _TRUE


def configure(environ=None) -> None:
    """Quiet TensorFlow's C++ log and the `KNOWN_WARNINGS`, unless `verbose`.

    Called when ``lsnet_tf`` is imported; it only has an effect on TensorFlow's log if that
    happens before TensorFlow is imported (as with ``python -m lsnet_tf.<command>``).
    """
    environ = os.environ if environ is None else environ
    if verbose(environ):
        return
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_TF_CPP_MIN_LOG_LEVEL)
    if sys.warnoptions:  # the user chose the warnings (-W, PYTHONWARNINGS): keep them
        return
    for category, module, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


@contextlib.contextmanager
def native_stderr(noise=NATIVE_NOISE):
    """Hold back the native lines matching `noise` that are written to stderr inside the block.

    What C++ code writes to the process's stderr (file descriptor 2) in the block is collected
    and written out at its end, less the lines matching one of the compiled patterns `noise`.
    If the block raises, every line comes out. With ``LSNET_VERBOSE=1``, or where file
    descriptor 2 cannot be redirected, nothing is held back.
    """
    if verbose():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            if not failed:
                lines = [line for line in lines if not any(p.search(line) for p in noise)]
            if lines:
                sys.stderr.write("".join(lines))
                sys.stderr.flush()
