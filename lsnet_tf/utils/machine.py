"""What machine a result was measured on (recorded beside benchmarks and experiment tables)."""
from __future__ import annotations

import os
import platform


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``, else
    None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def configure_cpu(environ=None) -> None:
    """Turn on TensorFlow's oneDNN CPU kernels unless the user chose (``TF_ENABLE_ONEDNN_OPTS``).

    TensorFlow 2.16 turns them on by itself only on CPUs with AVX-512 VNNI, BF16 or AMX; on an
    AVX2 CPU (this project's 2-core AMD EPYC) they made the training steps 1.2-1.9 × and L-SNet's
    inference on batches of 8 slices about 1.9 × faster, and one slice alone 1.4-1.75 × slower
    (``python -m benchmarks onednn``, docs/performance.md). Part of the commands' environment
    (`lsnet_tf.utils.console.command_environment`), not of importing ``lsnet_tf``; it only has an
    effect before TensorFlow is imported. ``TF_ENABLE_ONEDNN_OPTS=0`` turns them off; results
    then differ in float round-off only.
    """
    environ = os.environ if environ is None else environ
    environ.setdefault(ONEDNN_ENV, "1")
