"""A quiet console (``lsnet_tf.utils.console``): our lines and progress bars, no third-party noise.

Known answers: a one-epoch training run of ``python -m lsnet_tf.train`` prints none of
TensorFlow's start-up lines (CUDA, cuDNN, TensorRT, oneDNN), no FutureWarning or UserWarning, no
"Local rendezvous is aborting" and no "ran out of data", but its own lines and Keras' progress
bar; with ``LSNET_VERBOSE=1`` TensorFlow's lines and the google.api_core FutureWarning come
back. The known-noise patterns match the lines the converter and LiteRT print on this machine,
and any other native line still comes out.
"""
import os
import re
import subprocess
import sys
import warnings

import pytest

from lsnet_tf.utils import console

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = ("cuda", "cudnn", "tensorrt", "onednn", "futurewarning", "userwarning", "rendezvous",
         "ran out of data")
# A TensorFlow C++ log line ("2026-01-01 12:00:00.000000: I tensorflow/...").
TF_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+: [IWEF] (tensorflow|external)/", re.M)


def user_env(**extra):
    """The environment of a user's shell: none of the test session's TensorFlow settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES", "PYTHONWARNINGS",
                        console.VERBOSE_ENV)}
    env.update(extra)
    return env


# ------------------------------------------------------------------ configure


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), (" Yes ", True),
                                             ("on", True), ("0", False), ("", False),
                                             ("no", False)])
def test_verbose_reads_lsnet_verbose(value, expected):
    assert console.verbose({console.VERBOSE_ENV: value}) is expected
    assert console.verbose({}) is False


def test_configure_sets_the_tensorflow_log_level_unless_set_or_verbose(monkeypatch):
    monkeypatch.setattr(sys, "warnoptions", [])
    with warnings.catch_warnings():
        env = {}
        console.configure(env)
        assert env == {"TF_CPP_MIN_LOG_LEVEL": "3"}
        env = {"TF_CPP_MIN_LOG_LEVEL": "0"}  # the user's choice stays
        console.configure(env)
        assert env == {"TF_CPP_MIN_LOG_LEVEL": "0"}
        env = {console.VERBOSE_ENV: "1"}
        console.configure(env)
        assert env == {console.VERBOSE_ENV: "1"}


def emitted(module):
    """Whether the google.api_core FutureWarning, raised from `module`, gets through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("You are using a Python version (3.11.7) which Google will stop "
                               "supporting", FutureWarning, "x.py", 1, module=module)
    return len(caught) == 1


def test_known_third_party_warning_is_ignored_and_ours_are_not(monkeypatch):
    monkeypatch.setattr(sys, "warnoptions", [])
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("always")
        assert emitted("google.api_core._python_version_support")
        console.configure({})
        assert not emitted("google.api_core._python_version_support")
        assert emitted("lsnet_tf.data.pipeline")  # the same text from our code comes out


def test_warning_options_of_the_user_are_kept(monkeypatch):
    monkeypatch.setattr(sys, "warnoptions", ["error"])
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("always")
        console.configure({})
        assert emitted("google.api_core._python_version_support")


# ------------------------------------------------------------------ native lines

SAMPLES = [  # as printed on this machine
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "W0000 00:00:1795994054.659035    2607 tf_tfl_flatbuffer_helpers.cc:390] Ignored "
    "output_format.",
    "W0000 00:00:1795994054.659173    2607 tf_tfl_flatbuffer_helpers.cc:393] Ignored "
    "drop_control_dependency.",
    "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, "
    "output_inference_type: FLOAT32",
]


@pytest.mark.parametrize("line", SAMPLES)
def test_each_known_native_line_is_matched(line):
    assert sum(bool(p.search(line + "\n")) for p in console.NATIVE_NOISE) == 1


def test_native_stderr_holds_back_known_lines_only(capfd, monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    text = "\n".join(SAMPLES[:3] + ["E0000 something is wrong", ""])
    with console.native_stderr():
        os.write(2, text.encode())
    assert capfd.readouterr().err == "E0000 something is wrong\n"
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    with console.native_stderr():
        os.write(2, text.encode())
    assert capfd.readouterr().err == text


def test_native_stderr_lets_everything_out_on_an_error(capfd, monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    with pytest.raises(RuntimeError, match="conversion failed"):
        with console.native_stderr():
            os.write(2, (SAMPLES[0] + "\n").encode())
            raise RuntimeError("conversion failed")
    assert capfd.readouterr().err == SAMPLES[0] + "\n"


# ------------------------------------------------------------------ whole commands


@pytest.mark.slow
def test_tensorflow_lines_come_back_with_lsnet_verbose(tmp_path):
    # (the quiet counterpart is the training run below) A training command that loads
    # TensorFlow and stops at its missing dataset; only commands quiet the console (importing
    # lsnet_tf alone changes nothing: tests/test_import_side_effects.py).
    argv = [sys.executable, "-m", "lsnet_tf.train", "--set", f"data.dataset={tmp_path / 'none'}",
            "--set", f"train.output_dir={tmp_path / 'run'}"]
    loud = subprocess.run(argv, cwd=ROOT, env=user_env(**{console.VERBOSE_ENV: "1"}),
                          capture_output=True, text=True, timeout=300)
    assert loud.returncode == 2, loud.stderr  # not a prepared dataset: python -m lsnet_tf.train
    assert "\nerror: " in loud.stderr and "is not a prepared dataset" in loud.stderr, loud.stderr
    assert "Traceback" not in loud.stderr, loud.stderr
    # TensorFlow 2.16 on this machine: its CUDA plugin registration and CPU feature lines
    assert TF_LOG_LINE.search(loud.stderr), loud.stderr
    assert "FutureWarning" in loud.stderr


@pytest.mark.slow
def test_one_epoch_training_run_prints_only_our_lines(tmp_path):
    overrides = [
        "data.synthetic.num_patients=4", "data.synthetic.slices_per_patient=4",
        "data.synthetic.folds=2", "data.synthetic.image_size=64",
        "data.synthetic.max_target_size=30", "data.image_size=64", "data.batch_size=4",
        "model.width=4", "model.decoder_width=8", "data.max_boxes=2",
        f"data.cache_dir={tmp_path / 'cache'}", "train.strategy=default",
        f"train.output_dir={tmp_path / 'run'}", "export.dir=", "train.epochs=1",
        "train.steps_per_epoch=1", "train.verbose=1"]
    argv = [sys.executable, "-m", "lsnet_tf.train"]
    for item in overrides:
        argv += ["--set", item]
    result = subprocess.run(argv, cwd=ROOT, env=user_env(), capture_output=True, text=True,
                            timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    found = [word for word in NOISE if word in output.lower()]
    assert not found, output
    assert not TF_LOG_LINE.search(output), output
    assert "parameters: lnet" in output and "validation: per-slice DSC" in output
    assert "1/1" in output  # Keras' progress bar of the one step
