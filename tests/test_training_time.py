"""What the trainer does around the step: validation epochs, the strategy it picks, its timeline."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from lsnet_tf.config import ConfigError, load_config
from lsnet_tf.training.session import make_strategy, validation_epochs
from lsnet_tf.training.timing import Timeline


@pytest.mark.parametrize("epochs, every, expected", [
    (36, 5, [5, 10, 15, 20, 25, 30, 35, 36]),
    (10, 5, [5, 10]),
    (3, 5, [3]),
    (4, 1, [1, 2, 3, 4]),
])
def test_validation_runs_every_n_epochs_and_after_the_last(epochs, every, expected):
    cfg = load_config(None, [f"train.epochs={epochs}", f"train.eval_every={every}"])
    assert validation_epochs(cfg.train) == expected


@pytest.mark.parametrize("key, value, message", [
    ("train.eval_every", 0, "train.eval_every must be >= 1"),
    ("train.image_log_epochs", -1, "train.image_log_epochs must be >= 0"),
    ("model.threshold", 1.0, r"model.threshold must lie in \[0, 1\)"),
    ("model.mask_prior", 1.0, r"model.mask_prior must lie in \[0, 1\) \(0: a zero bias\)"),
    ("model.mask_prior", -0.01, r"model.mask_prior must lie in \[0, 1\)"),
    ("loss.mask_focal_normalizer", "pixels", "loss.mask_focal_normalizer must be positives or elements"),
])
def test_bad_settings_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"{key}={value}"])


def test_auto_strategy_is_single_device_without_several_gpus():
    # conftest splits the CPU into two logical devices: still no reason to mirror
    assert len(tf.config.list_logical_devices("CPU")) == 2
    assert not tf.config.list_logical_devices("GPU")
    strategy = make_strategy("auto")
    assert strategy.num_replicas_in_sync == 1
    assert not isinstance(strategy, tf.distribute.MirroredStrategy)
    assert isinstance(make_strategy("mirrored"), tf.distribute.MirroredStrategy)


def test_timeline_summary_from_known_times():
    t = Timeline()
    t.phases = {"datasets": 2.0, "model": 3.0}
    t.first_step_at = 6.5
    t.epochs = [20.0, 10.0, 12.0]
    t.steps = [[1.0] * 4, [2.0] * 4, [2.5] * 4]
    t.validation = [(0, 5.0), (2, 1.0)]  # passes in epochs 1 (traces the step) and 3
    t.callbacks = {"A": [3.0, 0.5, 1.5], "B": [0.0, 0.0, 0.0]}
    s = t.summary()
    assert s["startup"] == {"datasets": 2.0, "model": 3.0} and s["first_step_after_s"] == 6.5
    assert s["first_epoch_s"] == 20.0
    assert s["train_epoch_s"] == 10.5  # epochs 2 and 3 without epoch 3's validation pass
    assert s["steps_per_epoch"] == 4 and s["step_s"] == 2.25 and s["steps_s"] == 9.0
    assert s["validation_passes"] == 2 and s["validation_pass_s"] == 1.0  # the first traces
    assert s["callbacks_s"] == {"A": 1.0, "B": 0.0}
    assert s["other_s"] == pytest.approx(10.5 - 9.0 - 1.0)


def test_timeline_instruments_fit_without_changing_what_callbacks_see():
    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.calls = []

        def on_epoch_end(self, epoch, logs=None):
            self.calls.append(("epoch_end", epoch, sorted(logs)))

        def on_train_batch_end(self, batch, logs=None):
            self.calls.append(("batch_end", batch))

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 1), np.float32)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(2).repeat()
    val = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    recorder, timeline = Recorder(), Timeline()
    model.fit(train, epochs=3, steps_per_epoch=4, validation_data=val, validation_freq=[2, 3],
              callbacks=timeline.instrument([recorder]), verbose=0)
    assert [c for c in recorder.calls if c[0] == "batch_end"] == [("batch_end", b)
                                                                 for _ in range(3)
                                                                 for b in range(4)]
    ends = [c for c in recorder.calls if c[0] == "epoch_end"]
    assert [e[1] for e in ends] == [0, 1, 2]
    assert "val_loss" not in ends[0][2] and "val_loss" in ends[1][2]  # logs passed through
    assert [len(s) for s in timeline.steps] == [4, 4, 4]
    assert [e for e, _ in timeline.validation] == [1, 2] and len(timeline.epochs) == 3
    assert len(timeline.callbacks["Recorder"]) == 3
    assert all(x >= 0 for x in timeline.epochs) and timeline.first_step_at >= 0


def test_timeline_traces_the_chosen_steps_of_the_second_epoch(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    data = tf.data.Dataset.from_tensors((np.ones((2, 3), np.float32),
                                         np.zeros((2, 1), np.float32))).repeat()
    timeline = Timeline(trace_dir=str(tmp_path / "trace"), trace_steps=(1, 2))
    model.fit(data, epochs=2, steps_per_epoch=4, callbacks=timeline.instrument([]), verbose=0)
    traces = list((tmp_path / "trace").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert [len(s) for s in timeline.steps] == [4, 4]
