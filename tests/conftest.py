"""Shared test settings: quiet TensorFlow, TensorFlow's CPU kernels as the commands have them
(the commands' environment, ``lsnet_tf.utils.console.command_environment``, set here before TensorFlow
is imported: importing ``lsnet_tf`` alone sets nothing), and two logical CPU devices for
distribution tests.

The logical devices must be configured before TensorFlow initialises its runtime, so it happens
here, before any test module runs an op.
"""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from lsnet_tf.utils import console  # noqa: E402

console.command_environment()  # before TensorFlow, as every command: oneDNN kernels on

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

# Under pytest-xdist each worker process gets its share of the cores for one op's threads
# (one each with `make test`'s 2 workers on 2 cores) instead of every worker's pool spanning all
# of them (measured in docs/benchmarks/history.md, "Tests"). Results do not change (the kernels
# are the same; the tests that compare bits run their reference in the same process).
# Processes a test starts keep TensorFlow's defaults.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    tf.config.threading.set_intra_op_parallelism_threads(max(1, (os.cpu_count() or 1) // _workers))


# ------------------------------------------------------------------------------- one seed
# Every test, and every fixture it creates, starts from the same seed (Python, NumPy, TensorFlow
# and Keras): random weights and data do not depend on which tests ran before in the same worker,
# so a test passes or fails alike alone, in its file, in the suite and under any xdist split.


def _seed_everything():
    import keras

    keras.utils.set_random_seed(0)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_setup(item):
    _seed_everything()  # the fixtures this test creates
    yield


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item):
    _seed_everything()  # the test body, whichever fixtures were created before it
    yield


# ------------------------------------------------------------------------- heavy files first
# `make test` gives each xdist worker whole files (--dist loadfile), in collection order. The
# files below take most of the suite's time (tests/test_reliability.py alone about a quarter);
# collected first, they start at once and the light files fill the gaps, instead of one worker
# finishing a heavy file alone at the end. Heaviest first, from `pytest --durations`; the order
# of the tests inside a file does not change.

HEAVY_FILES = ("test_reliability.py", "test_lsnet.py", "test_predict.py", "test_export.py",
               "test_benchmarks.py", "test_train.py", "test_readme.py", "test_distributed.py",
               "test_experiments.py", "test_ensemble.py", "test_beam.py", "test_console.py",
               "test_cluster_faults.py", "test_buckets.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


# ----------------------------------------------------------------------------- tiny models
# Shared by the model tests (importable as ``from conftest import ...``: pytest puts tests/ on
# sys.path, there being no tests/__init__.py). Files that need other settings add them to these.

# S-Net on ResNet-18 (the default is 34): its training step traces in about 0.75 x the time;
# both depths are built and checked in tests/test_networks.py.
TINY = ["data.image_size=64", "model.width=4", "data.max_boxes=4", "model.snet_depth=18"]


# A tiny training run: that model with 2 RoI slots and an 8-channel decoder on 4 synthetic
# patients x 4 slices of 64 x 64 in 2 folds (8 training and 8 validation slices, batch 4), one
# device, learning rate 1e-3 (the files that train through the command line add their own).
TINY_RUN = [*TINY, "data.max_boxes=2", "model.decoder_width=8",
            "data.synthetic.num_patients=4", "data.synthetic.slices_per_patient=4",
            "data.synthetic.folds=2", "data.synthetic.image_size=64",
            "data.synthetic.max_target_size=30", "data.batch_size=4", "train.strategy=default",
            "train.learning_rate=1e-3"]


def tiny_cfg(*overrides):
    """The config of a tiny 64 x 64 model (width 4, 4 RoI slots, S-Net on ResNet-18) with `overrides` after it."""
    from lsnet_tf.config import load_config

    return load_config(None, [*TINY, *overrides])


def compiled(cfg, learning_rate=1e-3):
    """``build_model(cfg)`` compiled with one Adam(`learning_rate`) per network."""
    import keras

    from lsnet_tf.models.build import build_model

    model = build_model(cfg)
    networks = getattr(model, "networks", None) or {"lnet": None, "snet": None}
    model.compile(**{f"{name}_optimizer": keras.optimizers.Adam(learning_rate)
                     for name in networks})
    return model


def make_batch(n=2, size=64, with_target=(True, False), max_boxes=4):
    """A batch as the pipeline makes it: a bright rectangle target (its box, heatmap and ltrb
    from ``encode_targets``) on the images where `with_target` (cycled) is true."""
    import numpy as np

    from lsnet_tf.data import targets

    images = np.full((n, size, size, 1), 0.3, np.float32)
    masks = np.zeros((n, size, size, 1), np.float32)
    boxes = np.zeros((n, max_boxes, 4), np.float32)
    num = np.zeros((n,), np.int32)
    heat = np.zeros((n, size // 4, size // 4, 1), np.float32)
    ltrb = np.zeros((n, size // 4, size // 4, 4), np.float32)
    for i in range(n):
        if not with_target[i % len(with_target)]:
            continue
        x1, y1, x2, y2 = 20 + 4 * i, 16, 40 + 4 * i, 34
        images[i, y1:y2, x1:x2] = 0.8
        masks[i, y1:y2, x1:x2] = 1
        boxes[i, 0] = (x1, y1, x2, y2)
        num[i] = 1
        h, l = targets.encode_targets(tf.constant([[x1, y1, x2, y2]], tf.float32), size, size)
        heat[i], ltrb[i] = h.numpy(), l.numpy()
    return {"image": tf.constant(images), "mask": tf.constant(masks), "heatmap": tf.constant(heat),
            "ltrb": tf.constant(ltrb), "boxes": tf.constant(boxes), "num_boxes": tf.constant(num)}


# ------------------------------------------------------------------- one tiny exported model
# test_predict, test_batch_predict and test_litert predict with the same tiny random model; it
# is built once per session and exported once per format.


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """``(cfg, model, folder)``: a width-8, 64 x 64 random model whose heatmap head is scaled so
    that several RoIs per slice are valid (masks non-empty), and a folder for its exports."""
    import keras

    from lsnet_tf.config import load_config
    from lsnet_tf.models.build import build_model

    cfg = load_config(None, ["model.width=8", "data.image_size=64", "data.max_boxes=4"])
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    head = model.lnet.get_layer("kp_logits")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 4.0, bias + 2.0])
    return cfg, model, tmp_path_factory.mktemp("tiny_export")


@pytest.fixture(scope="session")
def tiny_saved_model(tiny_export):
    """`tiny_export`'s model as a SavedModel in the TF Serving layout: the model folder
    ``.../lsnet`` (version 1 inside)."""
    from lsnet_tf.export import saved_model

    cfg, model, root = tiny_export
    saved_model.export(model, cfg, str(root / "lsnet" / "1"))
    return str(root / "lsnet")


@pytest.fixture(scope="session")
def tiny_tflite(tiny_export):
    """`tiny_export`'s model as a float32 ``.tflite`` file."""
    from lsnet_tf.export import tflite

    cfg, model, root = tiny_export
    return tflite.export(model, cfg, str(root / "lsnet.tflite"))
