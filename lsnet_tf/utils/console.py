"""A quiet console: our own lines and progress bars, third-party start-up noise only on request.

Importing ``lsnet_tf`` changes nothing in the host process (no environment variable, warning
filter or logging setting), so a notebook or a service that imports it keeps TensorFlow as it had
it. The commands set their environment themselves, with `command_environment`: every
``python -m lsnet_tf.<command>`` (train, predict, evaluate, export, prepare, validate,
experiments, visualize, curves, ``lsnet_tf.data.synthetic``) and ``python -m benchmarks`` (with
its ``benchmarks.<name>`` children). The package's ``__init__`` calls it when `is_command` (the
``-m`` module of ``sys.orig_argv`` is one of them): that import runs before the command's module
and before TensorFlow, whose C++ log level and oneDNN setting are read when it loads. Under a
wrapper (``python -m cProfile -m lsnet_tf.train``) the process is the wrapper's and gets
nothing. The commands start quiet:

- TensorFlow's C++ log (``TF_CPP_MIN_LOG_LEVEL``) is set to 3 (fatal only) before TensorFlow is
  imported: no CUDA/cuDNN/cuFFT/cuBLAS factory lines, no "Could not find cuda drivers", no
  "TF-TRT Warning: Could not find TensorRT", no oneDNN or CPU-instruction notes, no "Local
  rendezvous is aborting" at the end of a dataset. Errors still reach the user as the Python
  exceptions TensorFlow raises, with their messages.
- Python warnings that third-party packages raise on every start and that say nothing about this
  project (`KNOWN_WARNINGS`) are ignored. Warnings raised because of how this project calls a
  library are not filtered.
- TensorFlow's oneDNN CPU kernels are on (``TF_ENABLE_ONEDNN_OPTS=1``,
  `lsnet_tf.utils.machine.configure_cpu`) unless the user set the variable.
- Native lines of the TFLite converter and of LiteRT (`NATIVE_NOISE`: "Created TensorFlow Lite
  XNNPACK delegate for CPU", absl's "All log messages before absl::InitializeLog()", the
  converter's "Ignored output_format", the int8 quantizer's "fully_quantize: 0, ...") are held
  back by `native_stderr` around the calls that print them, in commands and library calls alike
  (only for the call's duration); any other line written meanwhile still comes out, and all of
  them on an error.

``LSNET_VERBOSE=1`` (or true/yes/on) turns the quiet part off: TensorFlow's own default log level
and every warning come back. A ``TF_CPP_MIN_LOG_LEVEL`` the user has set is kept as it is, and so
are warning filters given with ``python -W`` or ``PYTHONWARNINGS``. A notebook that wants the
commands' settings calls ``lsnet_tf.utils.console.command_environment()`` before importing TensorFlow.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings

import lsnet_tf.utils.machine as machine  # not `from lsnet_tf import`: no edge back to the package

__all__ = ["VERBOSE_ENV", "QUIET_TF_CPP_MIN_LOG_LEVEL", "KNOWN_WARNINGS", "NATIVE_NOISE",
           "COMMAND_PACKAGES", "verbose", "configure", "command_environment", "command_module",
           "is_command", "native_stderr"]

VERBOSE_ENV = "LSNET_VERBOSE"
QUIET_TF_CPP_MIN_LOG_LEVEL = "3"
_TRUE = ("1", "true", "yes", "on")
# Top-level packages whose modules are commands (``python -m lsnet_tf.train``, ``python -m
# benchmarks``): a process running one of them gets `command_environment` on importing lsnet_tf.
COMMAND_PACKAGES = ("lsnet_tf", "benchmarks")
# The interpreter's short options that take a value (``-W arg``, ``-Warg``; ``-c`` ends them).
_OPTIONS_WITH_VALUE = "cmWX"

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

    Part of `command_environment`; it only has an effect on TensorFlow's log if it runs before
    TensorFlow is imported.
    """
    environ = os.environ if environ is None else environ
    if verbose(environ):
        return
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_TF_CPP_MIN_LOG_LEVEL)
    if sys.warnoptions:  # the user chose the warnings (-W, PYTHONWARNINGS): keep them
        return
    for category, module, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def command_environment(environ=None) -> None:
    """What every command sets before TensorFlow is imported: the quiet console (`configure`)
    and TensorFlow's oneDNN CPU kernels (`lsnet_tf.utils.machine.configure_cpu`).

    `environ` (default ``os.environ``) gets ``TF_CPP_MIN_LOG_LEVEL=3`` (unless `verbose`) and
    ``TF_ENABLE_ONEDNN_OPTS=1``, each only where the user has not set it; the warning filters
    of `KNOWN_WARNINGS` are added unless `verbose` or the user gave ``-W``/``PYTHONWARNINGS``.
    Called by ``lsnet_tf/__init__.py`` when `is_command`, and by the tests' conftest.
    """
    configure(environ)
    machine.configure_cpu(environ)


def command_module(argv=None) -> str | None:
    """The module the interpreter was asked to run with ``-m``, from its command line `argv`
    (default ``sys.orig_argv``: ``[python, *options, "-m", module, *args]``), or None when it
    runs a script, ``-c`` code, stdin or an interactive session.

    ``sys.orig_argv`` is read because, while ``python -m lsnet_tf.train`` imports the package
    ``lsnet_tf`` (before the module itself), ``sys.argv[0]`` is still ``"-m"`` and
    ``__main__.__spec__`` is not set yet.
    """
    argv = list(getattr(sys, "orig_argv", ()) if argv is None else argv)
    args = iter(argv[1:])
    for arg in args:
        if arg == "--" or arg == "-" or not arg.startswith("-"):
            return None  # a script (or stdin) follows: no module
        if arg.startswith("--"):  # --check-hash-based-pycs MODE; --help, --version, ...
            if arg == "--check-hash-based-pycs":
                next(args, None)
            continue
        for i, letter in enumerate(arg[1:], start=2):  # -E, -I, -Wignore, -Im module, ...
            if letter in _OPTIONS_WITH_VALUE:
                value = arg[i:] or next(args, None)
                if letter == "m":
                    return value or None
                if letter == "c":
                    return None
                break
    return None


def is_command(argv=None) -> bool:
    """Whether this process runs one of the project's commands: `command_module` is
    ``lsnet_tf`` or ``benchmarks`` or a module in them (`COMMAND_PACKAGES`)."""
    module = command_module(argv)
    return module is not None and module.split(".")[0] in COMMAND_PACKAGES


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
