"""No side effects on import: ``import lsnet_tf`` leaves the host process as it was; the commands
still set their environment (``lsnet_tf.utils.console.command_environment``) before TensorFlow loads.

Importing the package, or its library modules, in a notebook or a service changes no environment
variable (``TF_CPP_MIN_LOG_LEVEL``, ``TF_ENABLE_ONEDNN_OPTS``, ...), no ``warnings`` filter and
no ``logging`` setting (the root logger's level and handlers, the ``tensorflow`` and ``absl``
loggers). One subprocess, started without the test session's settings, takes a snapshot of the
three before and after ``import lsnet_tf`` alone (nothing else imported: any change is ours),
then again around the library modules, TensorFlow, Keras and the other libraries they use being
imported first (their own imports change things: numpy and scipy add warning filters,
TensorFlow sets ``TF2_BEHAVIOR``); it prints the differences as JSON and the tests assert on
them.

A command (``python -m lsnet_tf.<command>``, ``python -m benchmarks``) runs with a
``sitecustomize`` that records the settings at the first ``import tensorflow`` (what TensorFlow
reads) and at exit: ``TF_CPP_MIN_LOG_LEVEL=3``, ``TF_ENABLE_ONEDNN_OPTS=1`` and the ignored
google.api_core FutureWarning, as before; a variable the user set is kept, and
``LSNET_VERBOSE=1`` leaves the log level alone.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from lsnet_tf.utils import console

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND_VARIABLES = ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")


def user_env(**extra):
    """The environment of a user's shell: none of the commands' settings, which the test session
    has (conftest sets the commands' environment)."""
    env = {k: v for k, v in os.environ.items()
           if k not in (*COMMAND_VARIABLES, "PYTHONWARNINGS", console.VERBOSE_ENV)}
    env.update(extra)
    return env


# ------------------------------------------------------------------ importing the package

SNAPSHOTS = textwrap.dedent(r"""
    import json, logging, os, sys, warnings

    def state():
        def logger(name):
            log = logging.getLogger(name)
            return {"level": log.level, "handlers": [repr(h) for h in log.handlers],
                    "propagate": log.propagate, "disabled": log.disabled}
        return {
            "environ": dict(os.environ),
            "warnings": [[f[0], getattr(f[1], "pattern", f[1]), f[2].__name__,
                          getattr(f[3], "pattern", f[3]), f[4]] for f in warnings.filters],
            "logging": {"root": {"level": logging.root.level,
                                 "handlers": [repr(h) for h in logging.root.handlers]},
                        "tensorflow": logger("tensorflow"), "absl": logger("absl"),
                        "logger class": logging.getLoggerClass().__name__,
                        "disable": logging.root.manager.disable}}

    def changes(before, after, modules_before):
        old, new = before["environ"], after["environ"]
        return {
            "environ": {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new))
                        if old.get(k) != new.get(k)},
            "warnings": {"added": [f for f in after["warnings"] if f not in before["warnings"]],
                         "removed": [f for f in before["warnings"] if f not in after["warnings"]],
                         "same": before["warnings"] == after["warnings"]},
            "logging": {k: [before["logging"][k], after["logging"][k]]
                        for k in before["logging"] if before["logging"][k] != after["logging"][k]},
            "imported": sorted({m.split(".")[0] for m in set(sys.modules) - modules_before}),
        }

    report = {}
    modules = set(sys.modules)
    before = state()
    import lsnet_tf
    report["package"] = changes(before, state(), modules)
    report["package"]["tensorflow"] = "tensorflow" in sys.modules

    # the libraries the modules use, first: their own imports change things
    import numpy, scipy.ndimage, scipy.special, yaml, PIL.Image, matplotlib
    import tensorflow, keras
    modules = set(sys.modules)
    before = state()
    import lsnet_tf.config, lsnet_tf.data, lsnet_tf.data.pipeline, lsnet_tf.models
    import lsnet_tf.models.build, lsnet_tf.losses, lsnet_tf.metrics.evaluation
    import lsnet_tf.experiments.cli, lsnet_tf.predict, lsnet_tf.evaluate, lsnet_tf.train
    import lsnet_tf.export, lsnet_tf.export.saved_model, lsnet_tf.export.tflite
    report["modules"] = changes(before, state(), modules)
    print("REPORT " + json.dumps(report))
""")


@pytest.fixture(scope="module")
def imported():
    """{"package": changes by ``import lsnet_tf``, "modules": changes by its library modules}."""
    result = subprocess.run([sys.executable, "-c", SNAPSHOTS], cwd=ROOT, env=user_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


@pytest.mark.slow
@pytest.mark.parametrize("what", ["package", "modules"])
def test_import_leaves_the_environment_as_it_was(imported, what):
    assert imported[what]["environ"] == {}, (
        f"importing the {what} changed os.environ: {imported[what]['environ']}")


@pytest.mark.slow
@pytest.mark.parametrize("what", ["package", "modules"])
def test_import_leaves_the_warning_filters_as_they_were(imported, what):
    changed = imported[what]["warnings"]
    assert changed["same"], (f"importing the {what} changed warnings.filters: {changed} "
                             f"(modules imported meanwhile: {imported[what]['imported']})")


@pytest.mark.slow
@pytest.mark.parametrize("what", ["package", "modules"])
def test_import_leaves_logging_as_it_was(imported, what):
    assert imported[what]["logging"] == {}, (
        f"importing the {what} changed logging: {imported[what]['logging']} "
        f"(modules imported meanwhile: {imported[what]['imported']})")


@pytest.mark.slow
def test_the_package_alone_imports_no_third_party_library(imported):
    # what makes the "package" snapshots above a check of our code alone
    assert imported["package"]["tensorflow"] is False
    assert [m for m in imported["package"]["imported"]
            if m not in sys.stdlib_module_names and m != "lsnet_tf"] == []


# ------------------------------------------------------------------ the commands

SITECUSTOMIZE = textwrap.dedent(r"""
    # Records what a command process sets: at the first import of tensorflow and at exit.
    import atexit, json, os, sys, warnings

    _NAMES = ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")
    _report = {"tensorflow saw": None}

    class _Watch:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" and _report["tensorflow saw"] is None:
                _report["tensorflow saw"] = {k: os.environ.get(k) for k in _NAMES}
            return None

    sys.meta_path.insert(0, _Watch())

    def _known_warning_shown():
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn_explicit("You are using a Python version (3.11.7) which Google will "
                                   "stop supporting", FutureWarning, "x.py", 1,
                                   module="google.api_core._python_version_support")
        return len(caught) == 1

    @atexit.register
    def _write():
        _report["at exit"] = {k: os.environ.get(k) for k in _NAMES}
        _report["known warning shown"] = _known_warning_shown()
        with open(os.environ["LSNET_TEST_REPORT"], "w") as f:
            json.dump(_report, f)
""")


def run_command(tmp_path, argv, error=None, **env):
    """Run ``python -m <argv>`` as a user would (plus `env`); returns the sitecustomize report.
    The command must succeed, or fail with `error` in its stderr when given."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    report = tmp_path / "report.json"
    path = os.pathsep.join([str(site), ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
    result = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT,
                            env=user_env(PYTHONPATH=path, LSNET_TEST_REPORT=str(report), **env),
                            capture_output=True, text=True, timeout=300)
    if error is None:
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        assert result.returncode != 0 and error in result.stderr, result.stderr[-3000:]
    return json.loads(report.read_text())


QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["lsnet_tf.train", "--help"], ["lsnet_tf.export", "--help"],
                                  ["lsnet_tf.experiments", "--help"], ["benchmarks", "--help"]])
def test_a_command_gets_the_quiet_environment(tmp_path, argv):
    report = run_command(tmp_path, argv)
    assert report["at exit"] == QUIET
    assert report["known warning shown"] is False


@pytest.mark.slow
def test_tensorflow_in_a_command_reads_the_quiet_environment(tmp_path):
    # a training run that loads TensorFlow, then stops at its missing dataset
    report = run_command(tmp_path, ["lsnet_tf.train", "--set", "data.dataset=" + str(
        tmp_path / "missing"), "--set", "train.output_dir=" + str(tmp_path / "run")],
                         error="is not a prepared dataset")
    assert report["tensorflow saw"] == QUIET
    assert report["at exit"] == QUIET


@pytest.mark.slow
def test_a_command_keeps_the_users_choices(tmp_path):
    report = run_command(tmp_path, ["lsnet_tf.train", "--help"], TF_CPP_MIN_LOG_LEVEL="1",
                         TF_ENABLE_ONEDNN_OPTS="0")
    assert report["at exit"] == {"TF_CPP_MIN_LOG_LEVEL": "1", "TF_ENABLE_ONEDNN_OPTS": "0"}
    report = run_command(tmp_path, ["lsnet_tf.train", "--help"], **{console.VERBOSE_ENV: "1"})
    assert report["at exit"] == {"TF_CPP_MIN_LOG_LEVEL": None, "TF_ENABLE_ONEDNN_OPTS": "1"}
    assert report["known warning shown"] is True


# ------------------------------------------------------------------ command_module


PY = "/usr/bin/python3"


@pytest.mark.parametrize("argv, module", [
    ([PY, "-m", "lsnet_tf.train", "--set", "a=1"], "lsnet_tf.train"),
    ([PY, "-mlsnet_tf.export"], "lsnet_tf.export"),
    ([PY, "-W", "ignore", "-X", "dev", "-m", "benchmarks", "onednn"], "benchmarks"),
    ([PY, "-Wignore", "-Im", "lsnet_tf.predict", "-m", "x"], "lsnet_tf.predict"),
    ([PY, "-B", "--check-hash-based-pycs", "always", "-m", "pytest", "-q"], "pytest"),
    ([PY, "-m", "ipykernel_launcher", "-f", "kernel.json"], "ipykernel_launcher"),
    ([PY, "-c", "import lsnet_tf", "-m", "lsnet_tf.train"], None),
    ([PY, "-Ic", "import lsnet_tf"], None),
    ([PY, "script.py", "-m", "lsnet_tf.train"], None),
    ([PY, "--", "script.py"], None),
    ([PY, "-"], None),
    ([PY], None),
    ([], None),
])
def test_command_module_reads_the_interpreters_command_line(argv, module):
    assert console.command_module(argv) == module


def test_is_command_only_for_the_projects_packages():
    assert console.is_command([PY, "-m", "lsnet_tf.train"])
    assert console.is_command([PY, "-m", "lsnet_tf.data.synthetic"])
    assert console.is_command([PY, "-m", "benchmarks"])
    assert console.is_command([PY, "-m", "benchmarks.onednn", "--child", "{}"])
    assert not console.is_command([PY, "-m", "benchmarks_of_mine"])
    assert not console.is_command([PY, "-m", "lsnet_tf_plugins.x"])
    assert not console.is_command([PY, "-m", "ipykernel_launcher"])
    assert not console.is_command([PY, "-c", "import lsnet_tf"])
    # this test process: pytest, where conftest sets the environment itself
    assert not console.is_command()


def test_command_environment_sets_the_log_level_and_the_cpu_kernels(monkeypatch):
    import warnings

    monkeypatch.setattr(sys, "warnoptions", [])
    with warnings.catch_warnings():
        env = {}
        console.command_environment(env)
        assert env == QUIET
        env = {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_ENABLE_ONEDNN_OPTS": "0"}
        console.command_environment(env)
        assert env == {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_ENABLE_ONEDNN_OPTS": "0"}
        env = {console.VERBOSE_ENV: "1"}
        console.command_environment(env)
        assert env == {console.VERBOSE_ENV: "1", "TF_ENABLE_ONEDNN_OPTS": "1"}
