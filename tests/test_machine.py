"""lsnet_tf.utils.machine: the CPU model recorded beside results, and oneDNN turned on at import."""
import os
import subprocess
import sys

import pytest

from lsnet_tf.utils import machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_configure_cpu_turns_onednn_on_unless_the_user_chose():
    env = {}
    machine.configure_cpu(env)
    assert env == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    env = {"TF_ENABLE_ONEDNN_OPTS": "0"}  # the user's choice stays
    machine.configure_cpu(env)
    assert env == {"TF_ENABLE_ONEDNN_OPTS": "0"}


def test_cpu_model_is_a_name_or_none():
    name = machine.cpu_model()
    assert name is None or (isinstance(name, str) and name.strip() == name and name)


@pytest.mark.slow
@pytest.mark.parametrize("setting, enabled", [(None, "True"), ("0", "False")])
def test_the_command_environment_before_tensorflow_decides_onednn(setting, enabled):
    """What every command does before TensorFlow loads (``console.command_environment``, which
    importing the package applies only in a command's process) turns oneDNN on unless the user
    set the variable."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    code = ("import lsnet_tf.utils.console\nlsnet_tf.utils.console.command_environment()\n"
            "import os, tensorflow\n"
            "assert os.environ['TF_ENABLE_ONEDNN_OPTS'] == ('0' if "
            f"{setting!r} == '0' else '1')\n"
            "from tensorflow.python.util import _pywrap_util_port\n"
            "print(_pywrap_util_port.IsMklEnabled())")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == enabled
