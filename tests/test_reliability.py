"""Training under faults: kill and resume, non-finite losses, corrupt shards, multi-worker
training and deterministic runs (python -m lsnet_tf.train on a tiny synthetic config)."""
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import keras
import pytest
import tensorflow as tf

from lsnet_tf import train
from lsnet_tf.training import session
from lsnet_tf.config import ConfigError, load_config
from lsnet_tf.data import pipeline, records
from lsnet_tf.models.build import build_model, compile_model, model_networks
from lsnet_tf.training.callbacks import CheckpointCallback, CheckpointError
from lsnet_tf.training.nonfinite import NonFiniteCallback, NonFiniteGuard, NonFiniteLossError
from conftest import TINY_RUN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# conftest's tiny run; the learning rate halves every 2 epochs (4 steps).
TINY = [*TINY_RUN, "train.image_log_epochs=0", "export.dir=", "train.lr_decay_epochs=2",
        "train.lr_decay_factor=0.5", "train.steps_per_epoch=2", "train.verbose=2"]
STEPS = 2
# The one-stage U-Net traces in about half L-SNet's time; the subprocess tests of the training
# machinery (which is the same for every model) use it, L-SNet's loss terms are tested in-process.
UNET = ["model.architecture=unet", "model.family=unet"]


def expected_lr(step):
    return 1e-3 * 0.5 ** (step // (2 * STEPS))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The tiny synthetic dataset, generated once for every test here."""
    d = tmp_path_factory.mktemp("cache")
    cfg = load_config(None, TINY + [f"data.cache_dir={d}"])
    pipeline.resolve_dataset(cfg.data)
    return str(d)


def tiny_cfg(cache, out, *extra):
    return load_config(None, TINY + [f"data.cache_dir={cache}", f"train.output_dir={out}", *extra])


def cli(cache, out, *extra):
    sets = TINY + [f"data.cache_dir={cache}", f"train.output_dir={out}", *extra]
    return [sys.executable, "-m", "lsnet_tf.train"] + [a for s in sets for a in ("--set", s)]


def env(**extra):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO)
    e.pop("TF_CONFIG", None)
    e.update(extra)
    return e


def restored(cfg, directory):
    """(model, checkpoint callback, epoch) of the latest checkpoint in `directory`."""
    model = build_model(cfg)
    compile_model(model, cfg, STEPS)
    ckpt = CheckpointCallback(directory, model)
    return model, ckpt, ckpt.restore()


def checkpoint_arrays(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if not k.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}


def assert_all_finite(prefix):
    arrays = checkpoint_arrays(prefix)
    assert len(arrays) > 10
    for k, v in arrays.items():
        if np.asarray(v).dtype.kind == "f":
            assert np.isfinite(v).all(), k


def logged_learning_rates(logdir):
    """{epoch index: learning rate} from the LearningRateLogger events of every process."""
    rates = {}
    for name in os.listdir(logdir):
        try:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
                for v in event.summary.value:
                    if v.tag == "learning_rate":
                        rates.setdefault(event.step, []).append(float(tf.make_ndarray(v.tensor)))
        except tf.errors.DataLossError:  # the killed process may leave a torn last record
            pass
    return rates


# ----------------------------------------------------------------------------- config

def test_new_options_are_validated():
    cfg = load_config(None, [])
    assert (cfg.train.on_nonfinite, cfg.train.deterministic, cfg.data.on_corrupt) == (
        "stop", False, "error")
    with pytest.raises(ConfigError, match="train.on_nonfinite must be stop or skip"):
        load_config(None, ["train.on_nonfinite=ignore"])
    with pytest.raises(ConfigError, match="data.on_corrupt must be error or skip"):
        load_config(None, ["data.on_corrupt=repair"])


# ----------------------------------------------------------------------------- kill and resume

@pytest.mark.slow
def test_sigkill_then_same_command_resumes_counters_and_schedule(cache, tmp_path):
    epochs = 6
    out = tmp_path / "run"
    cmd = cli(cache, out, f"train.epochs={epochs}", *UNET)
    state = out / "checkpoints" / "checkpoint"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 400
            while not state.exists() and first.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            assert first.poll() is None, "the run ended before it could be killed:\n" + (
                tmp_path / "first.log").read_text()[-3000:]
            assert state.exists(), "no checkpoint within the time limit"
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(30)
    assert first.returncode == -signal.SIGKILL
    killed_at = int(tf.train.get_checkpoint_state(str(out / "checkpoints"))
                    .model_checkpoint_path.rpartition("-")[2])
    assert 1 <= killed_at < epochs

    second = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=400)
    text = second.stdout + second.stderr
    assert second.returncode == 0, text[-3000:]
    m = re.search(r"resumed from (\S+) at epoch (\d+) \(optimizer step (\d+), learning rate "
                  r"([0-9.e+-]+)\)", text)
    assert m, text[-3000:]
    start = int(m.group(2))
    assert start >= killed_at and m.group(1).endswith(f"ckpt-{start}")
    assert int(m.group(3)) == start * STEPS
    assert float(m.group(4)) == pytest.approx(expected_lr(start * STEPS), rel=1e-5)
    # Keras trains the remaining epochs only, numbered on from the checkpoint.
    assert [int(e) for e in re.findall(r"^Epoch (\d+)/%d$" % epochs, text, re.M)] == list(
        range(start + 1, epochs + 1))

    # Every epoch's learning rate (both processes' TensorBoard logs) follows the schedule.
    rates = logged_learning_rates(out / "logs" / "train")
    assert sorted(rates) == list(range(epochs))
    for epoch, values in rates.items():
        assert values == pytest.approx([expected_lr((epoch + 1) * STEPS)] * len(values), rel=1e-6)

    cfg = load_config(str(out / "config.yaml"))
    model, ckpt, epoch = restored(cfg, str(out / "checkpoints"))
    assert epoch == epochs and ckpt.restored_from.endswith(f"ckpt-{epochs}")
    assert int(model.optimizer.iterations.numpy()) == epochs * STEPS
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(
        expected_lr(epochs * STEPS), rel=1e-6)
    assert json.loads((out / "eval.json").read_text())["epochs"] == epochs


def _compiled_model(cache, tmp_path):
    """A tiny compiled model, its config and its run's checkpoint folder."""
    cfg = tiny_cfg(cache, tmp_path / "run")
    model = build_model(cfg)
    compile_model(model, cfg, STEPS)
    return cfg, model, str(tmp_path / "run" / "checkpoints")


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(cache, tmp_path):
    cfg, model, directory = _compiled_model(cache, tmp_path)
    ckpt = CheckpointCallback(directory, model)
    kernel = model.lnet.trainable_variables[0]
    saved = {}
    for epoch in range(3):
        kernel.assign(tf.fill(kernel.shape, float(epoch + 1)))
        ckpt.on_epoch_end(epoch)
        saved[epoch + 1] = kernel.numpy().copy()
    # A torn data file in the newest checkpoint (as a power loss or a full disk can leave).
    data = directory + "/ckpt-3.data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    messages = []
    model2 = build_model(cfg)
    compile_model(model2, cfg, STEPS)
    ckpt2 = CheckpointCallback(directory, model2, log=messages.append)
    assert ckpt2.restore() == 2
    assert ckpt2.restored_from.endswith("ckpt-2")
    np.testing.assert_array_equal(model2.lnet.trainable_variables[0].numpy(), saved[2])
    assert len(messages) == 1 and "ckpt-3 cannot be read" in messages[0]
    assert "trying the previous one" in messages[0]
    # The next save replaces the torn checkpoint.
    ckpt2.on_epoch_end(2)
    assert CheckpointCallback(directory, model).restore() == 3

    # A lost index file: the checkpoints are found by name.
    os.remove(os.path.join(directory, "checkpoint"))
    ckpt3 = CheckpointCallback(directory, model2)
    assert ckpt3.restore() == 3 and ckpt3.restored_from.endswith("ckpt-3")

    # Nothing readable: a clear error naming the folder.
    for name in os.listdir(directory):
        if ".data-" in name:
            with open(os.path.join(directory, name), "r+b") as f:
                f.truncate(7)
    with pytest.raises(CheckpointError, match=r"checkpoints: no checkpoint can be read"):
        CheckpointCallback(directory, model2, log=messages.append).restore()


def test_checkpoint_with_nonfinite_weights_is_never_written(cache, tmp_path):
    cfg, model, directory = _compiled_model(cache, tmp_path)
    ckpt = CheckpointCallback(directory, model)
    ckpt.on_epoch_end(0)
    bias = model.snet.trainable_variables[1]
    bias.assign(tf.fill(bias.shape, float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"epoch 2: checkpoint not written, snet: "
                       r"variable \S+ holds non-finite values; the latest checkpoint is \S+ckpt-1"):
        ckpt.on_epoch_end(1)
    assert tf.train.latest_checkpoint(directory).endswith("ckpt-1")
    assert not os.path.exists(directory + "/ckpt-2.index")


# ----------------------------------------------------------------------------- non-finite losses

def batch(nan=False):
    from test_lsnet import make_batch

    b = make_batch(n=4, with_target=(True, False))
    if nan:
        image = b["image"].numpy()
        image[1, 10, 10, 0] = np.nan
        b["image"] = tf.constant(image)
    return b


def guarded(cfg, policy, weights=None):
    model = build_model(cfg)
    compile_model(model, cfg, STEPS)
    if weights is not None:
        model.set_weights(weights)
    return model, NonFiniteGuard(model, policy)


def state(model):
    from lsnet_tf.models.build import model_optimizers

    variables = [v for net in model_networks(model).values() for v in net.variables]
    variables += [v for opt in model_optimizers(model).values() for v in opt.variables]
    return [v.numpy().copy() for v in variables]


def test_skipped_batch_changes_nothing(cache, tmp_path):
    """skip: [good, NaN, good] leaves exactly the weights, batch-norm statistics, optimizer
    moments and step counters of training on [good, good]; the trackers ignore the NaN batch."""
    cfg = tiny_cfg(cache, tmp_path / "run")
    model, guard = guarded(cfg, "skip")
    reference, _ = guarded(cfg, "stop", model.get_weights())
    good1, bad, good2 = batch(), batch(nan=True), dict(batch(), image=batch()["image"] * 0.9)

    messages = []
    callback = NonFiniteCallback(guard, log=messages.append)
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_begin(4)
    model.train_step(good1)
    callback.on_train_batch_end(5)
    assert messages == []
    before = state(model)
    metrics = [v.numpy().copy() for t in model.trackers.values() for v in t.variables]
    logs = model.train_step(bad)
    callback.on_train_batch_end(6)
    for a, b in zip(before, state(model)):
        np.testing.assert_array_equal(a, b)
    for a, t in zip(metrics, [v for t in model.trackers.values() for v in t.variables]):
        np.testing.assert_array_equal(a, t.numpy())
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert int(guard.count.numpy()) == 1
    flagged = {t for t, f in zip(guard.terms, guard.flags.numpy()) if f}
    assert "s_loss" in flagged and "loss" in flagged
    model.train_step(good2)

    reference.train_step(good1)
    reference.train_step(good2)
    for a, b in zip(state(reference), state(model)):
        np.testing.assert_array_equal(a, b)
    assert int(model.optimizer.iterations.numpy()) == 2

    assert callback.skipped == 1 and len(messages) == 1
    assert re.match(r"epoch 5, batch 7 \(optimizer step 1\): non-finite [a-z_, ]*s_loss[a-z_, ]*; "
                    r"batch skipped \(no weight update\), 1 skipped so far", messages[0])


def test_stop_policy_names_epoch_batch_and_term(cache, tmp_path):
    cfg = tiny_cfg(cache, tmp_path / "run")
    model, guard = guarded(cfg, "stop")
    with pytest.raises(ValueError, match="policy must be one of stop, skip, received 'ignore'"):
        NonFiniteGuard(model, "ignore")
    callback = NonFiniteCallback(guard)
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_begin(2)
    model.train_step(batch())
    callback.on_train_batch_end(0)  # finite: nothing happens
    model.train_step(batch(nan=True))
    with pytest.raises(NonFiniteLossError, match=r"^epoch 3, batch 2 \(optimizer step 2\): "
                       r"non-finite .*s_loss.*train.on_nonfinite=skip"):
        callback.on_train_batch_end(1)


def with_nan_at(monkeypatch, element):
    """Make the training dataset's batch number `element` (0-based over all epochs) hold a
    NaN pixel."""
    original = pipeline.datasets_for

    def datasets_for(cfg, seed=None):
        train_ds, *rest = original(cfg, seed)

        def poison(i, b):
            nan = tf.where(tf.equal(i, element), float("nan"), 0.0)
            image = tf.tensor_scatter_nd_add(b["image"], [[0, 5, 5, 0]], [nan])
            return dict(b, image=image)

        return (train_ds.enumerate().map(poison), *rest)

    monkeypatch.setattr(pipeline, "datasets_for", datasets_for)


@pytest.mark.slow
def test_train_stops_on_nonfinite_loss_and_keeps_finite_checkpoint(cache, tmp_path, monkeypatch,
                                                                    capsys):
    with_nan_at(monkeypatch, 2)  # epoch 2, batch 1
    out = tmp_path / "run"
    args = cli(cache, out, "train.epochs=3", *UNET)[3:]  # L-SNet's terms: tests above
    assert train.main(args) == 1
    err = capsys.readouterr().err
    assert re.search(r"error: epoch 2, batch 1 \(optimizer step 3\): non-finite loss\. ", err), err
    assert "train.on_nonfinite=skip" in err
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    assert latest.endswith("ckpt-1")
    assert_all_finite(latest)
    assert not (out / "eval.json").exists()


def corrupt(path, record, mode="flip"):
    """Damage record `record` (0-based) of a TFRecord file: flip a byte of its data, or cut the
    file in the middle of it. TFRecord framing: uint64 length, uint32 CRC, data, uint32 CRC."""
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    offset = 0
    for _ in range(record):
        (length,) = struct.unpack("<Q", raw[offset:offset + 8])
        offset += 8 + 4 + length + 4
    (length,) = struct.unpack("<Q", raw[offset:offset + 8])
    middle = offset + 12 + length // 2
    if mode == "flip":
        raw[middle] ^= 0xFF
    else:
        raw = raw[:middle]
    with open(path, "wb") as f:
        f.write(bytes(raw))


def dataset_copy(cache, tmp_path):
    cfg = load_config(None, TINY + [f"data.cache_dir={cache}"])
    src = pipeline.resolve_dataset(cfg.data)
    dst = tmp_path / "dataset"
    shutil.copytree(src, dst)
    return str(dst)


@pytest.mark.slow
def test_skip_policies_end_to_end(cache, tmp_path, monkeypatch):
    """train.on_nonfinite=skip and data.on_corrupt=skip in one run: both are counted and
    reported, training completes, the checkpoint is finite, and the validation pass still knows
    its length (its shards are whole)."""
    data = dataset_copy(cache, tmp_path)
    shard = records.list_shards(data, [1])[0]
    corrupt(shard, 2)  # records 0 and 1 stay readable: 2 of the 8 training slices are lost
    with_nan_at(monkeypatch, 1)
    fit, lengths = keras.Model.fit, []

    def recording_fit(model, *args, **kwargs):
        lengths.append(int(kwargs["validation_data"].cardinality()))
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    out = tmp_path / "run"
    lines = []
    cfg = tiny_cfg(cache, out, f"data.dataset={data}", "train.epochs=2",
                   "train.on_nonfinite=skip", "data.on_corrupt=skip", "train.verbose=0", *UNET)
    summary = session.run(cfg, log=lines.append)
    text = "\n".join(lines)
    assert f"{shard}: corrupt TFRecord shard, unreadable from record 3 on (2 record(s)" in text
    assert "1 corrupt training shard(s), 2 of 8 training slices skipped" in text
    assert re.search(r"epoch 1, batch 2 \(optimizer step 1\): non-finite loss; batch "
                     r"skipped \(no weight update\), 1 skipped so far", text), text
    assert lengths == [2]  # 8 validation slices in batches of 4
    assert summary["skipped_batches"] == 1
    assert len(summary["corrupt_shards"]) == 1 and shard in summary["corrupt_shards"][0]
    on_disk = json.loads((out / "eval.json").read_text())
    assert on_disk["skipped_batches"] == 1
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    assert latest.endswith("ckpt-2")
    assert_all_finite(latest)
    # The skipped batch is no step: 2 epochs x 2 batches, one of them skipped.
    _, ckpt, _ = restored(cfg, str(out / "checkpoints"))
    optimizer, = [v for k, v in ckpt.objects.items() if k.endswith("_optimizer")]
    assert int(optimizer.iterations.numpy()) == 3


# ----------------------------------------------------------------------------- corrupt shards

def test_shard_checks_count_readable_records(cache, tmp_path):
    data = dataset_copy(cache, tmp_path)
    a, b = records.list_shards(data, [1])
    assert records.check_shard(a) == records.ShardCheck(a, 4)
    corrupt(a, 1)
    corrupt(b, 3, mode="truncate")
    ca, cb = records.check_shards([a, b])
    assert (ca.records, cb.records) == (1, 3) and not ca.ok and not cb.ok
    assert "corrupted record" in ca.error.lower() or "crc" in ca.error.lower(), ca.error
    assert ca.describe().startswith(f"{a}: corrupt TFRecord shard, unreadable from record 2 on")

    # The reading pipeline: an error by default, the readable records with on_corrupt=skip.
    cfg = load_config(None, TINY + [f"data.dataset={data}"]).data
    with pytest.raises(tf.errors.DataLossError) as info:
        for _ in pipeline.make_dataset(cfg, data, [1], training=False):
            pass
    explained = pipeline.explain_data_loss(data, info.value)
    assert isinstance(explained, records.CorruptShardError)
    assert a in str(explained) and b in str(explained) and "2 corrupt shard(s)" in str(explained)
    assert "data.on_corrupt=skip" in str(explained)
    import dataclasses
    skip = dataclasses.replace(cfg, on_corrupt="skip")
    n = sum(int(x["image"].shape[0]) for x in pipeline.make_dataset(skip, data, [1], training=False))
    assert n == 1 + 3
    # A DataLossError that no shard explains is passed on unchanged.
    clean = dataset_copy(cache, tmp_path / "clean")
    other = tf.errors.DataLossError(None, None, "elsewhere")
    assert pipeline.explain_data_loss(clean, other) is other

    # A corrupt validation shard is an error even with skip (evaluation needs every slice).
    corrupt(records.list_shards(data, [0])[0], 0)
    with pytest.raises(records.CorruptShardError, match=r"validation fold \(data.val_fold=0\)"):
        pipeline.check_training_shards(skip, data)


@pytest.mark.slow
def test_corrupt_shard_stops_training_naming_the_shard(cache, tmp_path, capsys):
    data = dataset_copy(cache, tmp_path)
    shard = records.list_shards(data, [1])[1]
    corrupt(shard, 0)
    out = tmp_path / "run"
    assert train.main(cli(cache, out, f"data.dataset={data}", "train.epochs=1", *UNET)[3:]) == 1
    err = capsys.readouterr().err
    assert f"error: 1 corrupt shard(s):\n  {shard}: corrupt TFRecord shard, unreadable from " \
           "record 1 on" in err, err
    assert "python -m lsnet_tf.prepare" in err


# ----------------------------------------------------------------------------- multi-worker

def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_workers(cmd, tmp_path, n=2, timeout=900):
    """Run `cmd` as the `n` workers of one cluster; their logs' texts (each asserted to exit 0)."""
    ports = free_ports(n)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs, logs = [], []
    try:
        for i in range(n):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            logs.append(open(tmp_path / f"worker{i}.log", "w"))
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env(TF_CONFIG=tf_config),
                                          stdout=logs[-1], stderr=subprocess.STDOUT))
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
        for f in logs:
            f.close()
    texts = [(tmp_path / f"worker{i}.log").read_text() for i in range(n)]
    for p, text in zip(procs, texts):
        assert p.returncode == 0, text[-3000:]
    return texts


def well_conditioned_dataset(folder, size=64, slices=8):
    """A prepared dataset of `soft_target_image`s in HU (the default window maps them to about
    0..1): fold 1 (training) 2 patients, fold 0 (validation) 1, `slices` slices each, every slice
    with one target of its own place and size."""
    from test_distributed import soft_target_image

    rng = np.random.default_rng(7)
    for fold, patients in ((0, 1), (1, 2)):
        for p in range(patients):
            pid = f"f{fold}p{p}"
            with records.ShardWriter(records.shard_path(folder, fold, pid)) as w:
                for k in range(slices):
                    bw, bh = rng.uniform(10, 30, 2)
                    x1, y1 = rng.uniform(4, size - 4 - bw), rng.uniform(4, size - 4 - bh)
                    image, mask = soft_target_image(rng, (x1, y1, x1 + bw, y1 + bh), size)
                    w.write(records.SliceRecord(np.round(400 * image - 160).astype(np.int16),
                                                mask.astype(np.uint8), pid, k, (1.0, 1.0, 1.0),
                                                fold))
    records.write_info(folder, {"folds": 2, "num_slices": {"0": slices, "1": 2 * slices}})
    return folder


# Keras's Adam (the trainer's optimizer): beta_1, beta_2, epsilon.
ADAM = (0.9, 0.999, 1e-7)


def adam_moments(arrays, net):
    """{weight key: (weight, first moment, second moment)} of `net`'s optimizer in a checkpoint
    (Keras 3 keeps ``_variables`` = [iterations, m_0, v_0, m_1, v_1, ...] per optimizer)."""
    weights = {int(k.split("/")[2]): k for k in arrays
               if k.startswith(f"{net}_optimizer/_trainable_variables/")}
    slots = {int(k.split("/")[2]): k for k in arrays
             if k.startswith(f"{net}_optimizer/_variables/")}
    out = {}
    for i, key in weights.items():
        m, v = arrays[slots[1 + 2 * i]], arrays[slots[2 + 2 * i]]
        assert m.shape == v.shape == arrays[key].shape, key
        out[key] = (arrays[key], m, v)
    return out


@pytest.mark.slow
def test_two_workers_with_synchronized_batch_norm_train_like_one_process(tmp_path):
    """L-SNet, one step of global batch 8 (4 slices per worker), batch norm in training mode and
    synchronized over the two workers (the default), on a well-conditioned dataset
    (`well_conditioned_dataset`; width 8, S-Net on ResNet-18, 64 x 64, ground-truth RoIs for
    S-Net, top_k = 1 so the RoI is not a random draw): the two workers end with identical
    checkpoints, and with those of one process that trains on the whole global batch (BN not
    synchronized there, as the trainer builds it on one device), to float rounding (measured,
    printed with ``pytest -s``):

    - the gradients: Adam's first moments (0.1 x the gradient after one step) to 6.5e-5 of each
      tensor's largest, its second moments to 1.1e-4 (asserted 5e-4 and 1e-3);
    - every BN moving statistic to 3.6e-7 (values about 1; asserted 2e-5);
    - the weights differ by up to 7.1e-5 (lr = 1e-3), and by exactly what Adam's step makes of the
      two runs' moments (to 1.2e-7; asserted 1e-6). This is where the difference enters: Adam
      moves a weight by lr · m / (sqrt(v) + 1e-7), which turns the float rounding of a gradient
      near 1e-7 (1e-5 of its tensor's largest) into a move of up to a few % of lr. After a second
      step those weights have changed the gradients themselves (10 % of a tensor's largest
      first moment in S-Net, measured), and on the tiny synthetic dataset of the other tests
      here (smooth images, width 4, 2 slices per worker) the weights drifted apart by up to
      3.9e-3 in two steps."""
    lr = 1e-3
    dataset = well_conditioned_dataset(str(tmp_path / "ds"))
    sets = ["train.deterministic=true", "train.epochs=1", "train.steps_per_epoch=1",
            "train.top_k=1", "train.gamma=1.0", "train.gt_box_epochs=1", "model.width=8",
            "data.batch_size=8", f"data.dataset={dataset}", f"train.learning_rate={lr}"]

    def command(out, *extra):
        return cli(str(tmp_path / "cache"), out, *sets, *extra)

    out = tmp_path / "workers"
    # The one-process run goes beside the cluster's (its start-up and tracing overlap theirs).
    single = subprocess.Popen(command(tmp_path / "single", "train.strategy=default"), cwd=REPO,
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        texts = run_workers(command(out, "train.strategy=multi_worker"), tmp_path)
        single_out = single.communicate(timeout=500)[0]
    finally:
        if single.poll() is None:
            single.kill()
            single.wait(30)
    assert "2 replica(s)" in texts[0] and "worker worker-1" in texts[1]
    assert all(re.search(r"batch norm: \d+ layers normalise with the statistics of the global "
                         r"batch over 2 replicas", t) for t in texts), texts[0][-2000:]
    # The chief (worker 0) writes the run folder, worker 1 only its own checkpoints.
    assert (out / "eval.json").is_file() and (out / "config.yaml").is_file()
    assert sorted(os.listdir(out / "workers" / "worker-1")) == ["checkpoints"]
    assert single.returncode == 0, single_out[-3000:]
    assert "1 replica(s)" in single_out and "batch norm:" not in single_out
    chief = tf.train.latest_checkpoint(str(out / "checkpoints"))
    worker = tf.train.latest_checkpoint(str(out / "workers" / "worker-1" / "checkpoints"))
    a, other = checkpoint_arrays(chief), checkpoint_arrays(worker)
    b = checkpoint_arrays(tf.train.latest_checkpoint(str(tmp_path / "single" / "checkpoints")))
    assert sorted(a) == sorted(b) == sorted(other)
    for k in a:
        np.testing.assert_array_equal(a[k], other[k], err_msg=k)  # the workers agree exactly
    for net in ("lnet", "snet"):
        assert int(a[f"{net}_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == 1
    statistics = [k for k in a if "/moving_" in k]
    assert len(statistics) > 100
    for k in statistics:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=2e-5, err_msg=k)
    beta_1, beta_2, eps = ADAM
    alpha = lr * np.sqrt(1 - beta_2) / (1 - beta_1)  # Adam's step size at step 1
    worst = {"statistics": max(np.abs(a[k] - b[k]).max() for k in statistics),
             "m": 0.0, "v": 0.0, "w": 0.0, "adam": 0.0}
    for net in ("lnet", "snet"):
        ours, theirs = adam_moments(a, net), adam_moments(b, net)
        assert len(ours) > 80
        for key, (w, m, v) in ours.items():
            w1, m1, v1 = theirs[key]
            assert np.abs(m1).max() > 0, key  # every weight has a gradient
            worst["m"] = max(worst["m"], np.abs(m - m1).max() / np.abs(m1).max())
            worst["v"] = max(worst["v"], np.abs(v - v1).max() / np.abs(v1).max())
            worst["w"] = max(worst["w"], np.abs(w - w1).max())
            step, step1 = alpha * m / (np.sqrt(v) + eps), alpha * m1 / (np.sqrt(v1) + eps)
            worst["adam"] = max(worst["adam"], np.abs((w - w1) + (step - step1)).max())
    print("two workers against one process, sync BN, one step:", worst)
    assert worst["m"] <= 5e-4 and worst["v"] <= 1e-3 and worst["adam"] <= 1e-6, worst
    assert worst["w"] <= 0.5 * lr, worst


# ----------------------------------------------------------------------------- determinism

def test_deterministic_option_makes_the_pipeline_deterministic(cache, tmp_path):
    cfg = tiny_cfg(cache, tmp_path / "run", "train.deterministic=true")
    assert not cfg.data.deterministic
    train_ds, val_ds, *_ = pipeline.datasets_for(cfg)
    assert train_ds.options().deterministic is True
    a = next(iter(train_ds))["image"].numpy()
    b = next(iter(pipeline.datasets_for(cfg)[0]))["image"].numpy()
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_deterministic_runs_give_bit_identical_weights(cache, tmp_path):
    procs = []
    for name in ("a", "b"):
        cmd = cli(cache, tmp_path / name, "train.deterministic=true", "train.epochs=1",
                  "train.steps_per_epoch=3", "data.augment=true")
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        texts = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
    for p, text in zip(procs, texts):
        assert p.returncode == 0, text[-3000:]
        assert "deterministic: op determinism and data.deterministic on" in text
    a = checkpoint_arrays(tf.train.latest_checkpoint(str(tmp_path / "a" / "checkpoints")))
    b = checkpoint_arrays(tf.train.latest_checkpoint(str(tmp_path / "b" / "checkpoints")))
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    iterations = [k for k in a if k.startswith("lnet_optimizer/") and "iteration" in k]
    assert iterations and int(a[iterations[0]]) == 3


def test_replicas_batch_norm_statistics_are_averaged(cache, tmp_path):
    """Batch-norm statistics differ per replica (each sees its share of the batch); before a
    checkpoint every replica gets their mean, the trainable weights are left alone."""
    from lsnet_tf.training.callbacks import average_replicas

    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "tests/conftest.py configures two logical CPUs"
    # Reduction through one device, not collective ops: the collectives of a second
    # MirroredStrategy in one process reuse the first one's instance keys (TensorFlow then
    # reports "Shape mismatch in the collective instance 100"), and other tests of this session
    # have made one already. The averaging is the same either way.
    strategy = tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        model = build_model(tiny_cfg(cache, tmp_path / "run", *UNET))
    stats = model.snet.non_trainable_variables
    assert stats and all("moving" in v.path for v in stats)
    rng = np.random.default_rng(0)
    values = []
    for v in stats:
        parts = [rng.normal(size=v.shape).astype(np.float32) for _ in range(2)]
        for component, part in zip(v.value.values, parts):
            component.assign(part)
        values.append(parts)
    kernel = model.snet.trainable_variables[0]
    before = [c.numpy().copy() for c in kernel.value.values]
    average_replicas(strategy, stats)
    for v, (a, b) in zip(stats, values):
        for component in v.value.values:
            np.testing.assert_allclose(component.numpy(), (a + b) / 2, rtol=1e-6)
    for c, b in zip(kernel.value.values, before):
        np.testing.assert_array_equal(c.numpy(), b)
