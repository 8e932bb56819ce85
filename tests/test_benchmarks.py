"""The benchmark harness (benchmarks/) and the training options it measures.

No timing is asserted: the harness must write well-formed results, its sampler agreement check
must catch a mismatch, and ``train.mixed_precision`` / ``train.jit_compile`` must take effect.
"""
import dataclasses
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import __main__ as cli
from benchmarks import datasets, sampler
from lsnet_tf.config import ConfigError, TrainConfig, load_config

TINY = ("data.synthetic.num_patients=2", "data.synthetic.slices_per_patient=2",
        "data.synthetic.folds=2", "data.synthetic.image_size=64",
        "data.synthetic.max_target_size=30", "data.image_size=64", "data.batch_size=2",
        "model.width=4", "model.decoder_width=8", "data.max_boxes=2", "train.strategy=default",
        "train.verbose=0")


@pytest.fixture(scope="module")
def tiny_batch(tmp_path_factory):
    """A config maker on a 64 x 64 synthetic dataset, and one training batch of it."""
    from lsnet_tf.data import pipeline, records

    cache = tmp_path_factory.mktemp("cache")

    def config(*extra):
        return load_config(None, [*TINY, f"data.cache_dir={cache}", *extra])

    cfg = config()
    dataset = pipeline.resolve_dataset(cfg.data)
    train_folds = records.split_folds(dataset, cfg.data.val_fold, "train")
    batch = next(iter(pipeline.make_dataset(cfg.data, dataset, train_folds, training=True)))
    return config, batch


def one_step(cfg, batch):
    from benchmarks.training import train_step
    from lsnet_tf.models.build import build_model, compile_model

    model = build_model(cfg)
    compile_model(model, cfg, steps_per_epoch=1)
    return model, train_step(model, batch)()


def test_quick_run_writes_json_and_markdown(tmp_path, monkeypatch):
    monkeypatch.setenv("LSNET_BENCH_TMP", str(tmp_path / "scratch"))
    assert cli.main(["sampler", "--quick", "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["command"] == "python -m benchmarks sampler --quick" and results["quick"]
    assert {"cpu", "usable_cores", "memory_gib", "tensorflow"} <= set(results["machine"])
    assert list(results["benchmarks"]) == ["sampler"]
    bench = results["benchmarks"]["sampler"]
    assert bench["command"] == "python -m benchmarks sampler --quick" and bench["started"]
    assert {"other_processes_cores", "load_average_1min"} <= set(bench["load"])
    assert bench["seconds"] > 0
    modes = {"eager", "tf.function", "tf.function jit_compile"}
    assert {(r["channels"], r["mode"]) for r in bench["rows"]} == {
        (c, m) for c in sampler.QUICK["channels"] for m in modes}
    for row in bench["rows"]:
        assert row["ratio"] == pytest.approx(row["sampler ms"] / row["crop_and_resize ms"],
                                             rel=0.02, abs=0.01)
        assert 0 <= row["max rel. difference"] < 2e-3
    assert len(bench["targets"]) == len(bench["rows"])
    assert all(t["met"] == (t["measured"] <= sampler.TARGET) for t in bench["targets"])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## sampler" in md and "`python -m benchmarks sampler --quick`" in md
    header = next(line for line in md.splitlines() if line.startswith("| channels"))
    assert header.count("|") == len(bench["rows"][0]) + 1


def test_naming_a_benchmark_refreshes_its_section_and_keeps_the_others(tmp_path):
    from benchmarks import harness

    def results(quick, **benches):
        return {"command": "python -m benchmarks", "quick": quick,
                "started": "2026-01-01 00:00 UTC",
                "seconds": 1.0, "machine": {"cpu": "c", "usable_cores": 2, "memory_gib": 1,
                                            "gpus": 0, "python": "3", "tensorflow": "2",
                                            "keras": "3"},
                "benchmarks": {n: {"title": n, "seconds": 1.0, "rows": [{"v": v}], **extra}
                               for n, (v, extra) in benches.items()}}

    out = str(tmp_path)
    harness.write_results(results(False, sampler=(1, {}), export=(2, {})), out, cli.NAMES)
    new = results(False, sampler=(3, {"command": "python -m benchmarks sampler",
                                      "started": "2026-02-02 00:00 UTC"}))
    new["command"], new["started"] = "python -m benchmarks sampler", "2026-02-02 00:00 UTC"
    harness.write_results(new, out, cli.NAMES)
    written = json.loads((tmp_path / "results.json").read_text())
    assert list(written["benchmarks"]) == ["sampler", "export"]  # the order of cli.NAMES
    assert written["benchmarks"]["sampler"]["rows"] == [{"v": 3}]
    kept = written["benchmarks"]["export"]
    assert kept["rows"] == [{"v": 2}] and written["kept_from_earlier_runs"] == ["export"]
    # A kept section says when and how it was measured: its file's command and start.
    assert (kept["command"], kept["started"]) == ("python -m benchmarks", "2026-01-01 00:00 UTC")
    md = (tmp_path / "results.md").read_text()
    assert "Sections kept from earlier runs (each says when and how it was measured): export." in md
    assert "Measured by `python -m benchmarks`, started 2026-01-01 00:00 UTC." in md
    assert "Measured by `python -m benchmarks sampler`, started 2026-02-02 00:00 UTC." in md
    # Quick sizes never mix with full ones: a quick run replaces the file.
    harness.write_results(results(True, memory=(4, {})), out, cli.NAMES)
    written = json.loads((tmp_path / "results.json").read_text())
    assert list(written["benchmarks"]) == ["memory"] and "kept_from_earlier_runs" not in written


@pytest.mark.slow
def test_onednn_runs_each_setting_in_its_own_process(tmp_path, monkeypatch):
    from benchmarks import onednn

    monkeypatch.setenv("LSNET_BENCH_TMP", str(tmp_path / "scratch"))
    bench = onednn.run(quick=True)  # raises if a child's oneDNN is not what it was asked for
    # The quick size measures one thing (inference at batch 1): the test is about the processes.
    assert [(r["round"], r["measure"]) for r in bench["rows"]] == [
        (1, "L-SNet (U-Net) inference per slice, 64x64, batch 1")]
    for row in bench["rows"]:
        assert row["oneDNN off (ms)"] > 0 and row["oneDNN on (ms)"] > 0
        assert row["on / off"] == pytest.approx(
            row["oneDNN on (ms)"] / row["oneDNN off (ms)"], abs=1e-3)


def test_unknown_benchmark_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sampler", "speed"])
    assert exit_info.value.code == 2
    assert "unknown benchmark speed" in capsys.readouterr().err


def test_boxes_and_theta_sample_the_same_points_and_mismatch_is_caught():
    rng = np.random.default_rng(0)
    boxes, theta = sampler.boxes_and_theta(3, 40, 16, rng)
    images = tf.constant(rng.normal(size=(3, 40, 40, 2)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(3, 16, 16, 2)).astype(np.float32))
    ours, native = sampler._ours(16, upstream), sampler._native(16, upstream)
    reference = native(images, tf.constant(boxes))
    assert sampler.check_agreement(ours(images, tf.constant(theta)), reference) < 1e-4
    # The same boxes one output pixel to the right: a mismatched pair must fail the check.
    shifted = theta.copy()
    shifted[:, 0, 2] += 2.0 * theta[:, 0, 0] / 16
    with pytest.raises(sampler.AgreementError, match="disagree on the crops"):
        sampler.check_agreement(ours(images, tf.constant(shifted)), reference)
    # Right crops but wrong image gradients are caught too.
    wrong = list(ours(images, tf.constant(theta)))
    wrong[1] = wrong[1] * 1.01
    with pytest.raises(sampler.AgreementError, match="disagree on the image gradients"):
        sampler.check_agreement(wrong, reference)


def test_replicated_dataset_repeats_every_shard(tmp_path, monkeypatch, tiny_batch):
    from lsnet_tf.data import pipeline, records

    config, _ = tiny_batch
    base = pipeline.resolve_dataset(config().data)
    grown = datasets.replicated(base, 3)
    for fold in (0, 1):
        assert len(records.list_shards(grown, [fold])) == 3 * len(records.list_shards(base, [fold]))
        assert pipeline.count_slices(grown, [fold]) == 3 * pipeline.count_slices(base, [fold])
    assert datasets.replicated(base, 1) == base


def test_train_option_values_are_checked():
    with pytest.raises(ConfigError, match="'train.jit_compile' must be true or false"):
        load_config(None, ["train.jit_compile=1"])
    with pytest.raises(ConfigError, match="train.mixed_precision must be true or false"):
        dataclasses.replace(TrainConfig(), mixed_precision="yes").validate()
    with pytest.raises(ConfigError, match="'train.sync_batch_norm' must be true or false"):
        load_config(None, ["train.sync_batch_norm=yes please"])
    with pytest.raises(ConfigError, match="train.sync_batch_norm must be true or false"):
        dataclasses.replace(TrainConfig(), sync_batch_norm=1).validate()
    assert not TrainConfig().mixed_precision and not TrainConfig().jit_compile
    assert TrainConfig().sync_batch_norm


@pytest.mark.slow
def test_mixed_precision_builds_float16_networks_with_float32_heads(tiny_batch):
    import keras

    from lsnet_tf.models.build import build_model, compile_model, nested_layers

    config, batch = tiny_batch
    lsnet = build_model(config("train.mixed_precision=true"))
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    for net in (lsnet.lnet, lsnet.snet):
        assert net.dtype_policy.name == "mixed_float16"
        convs = nested_layers(net, keras.layers.Conv2D)
        assert convs and all(c.compute_dtype == "float16" and c.kernel.dtype == "float32"
                             for c in convs)
    out = lsnet.lnet(batch["image"], training=False)
    assert {v.dtype for v in out.values()} == {tf.float32}
    assert lsnet.snet(batch["image"], training=False).dtype == tf.float32
    # One training step (on the smallest model, to keep the test short) is finite, and Keras's
    # loss scaling, which the models' train steps do not apply, is off.
    model, loss = one_step(config("model.architecture=fcn", "model.family=fcn",
                                  "model.snet_depth=18", "train.mixed_precision=true"), batch)
    assert model.snet.dtype_policy.name == "mixed_float16"
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert math.isfinite(loss)
    default = build_model(config())
    compile_model(default, config(), steps_per_epoch=1)
    assert default.lnet.dtype_policy.name == "float32" and default.jit_compile is False


@pytest.mark.slow
def test_jit_compile_option_reaches_the_compiled_model(tiny_batch):
    config, batch = tiny_batch
    # The smallest model (one-stage FCN, ResNet18 layout) keeps XLA's compile time short.
    model, loss = one_step(config("model.architecture=fcn", "model.family=fcn",
                                  "model.snet_depth=18", "train.jit_compile=true"), batch)
    assert model.jit_compile is True
    assert math.isfinite(loss)


def test_mixed_precision_with_jit_compile_is_refused():
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_config(None, ["train.mixed_precision=true", "train.jit_compile=true"])


@pytest.mark.slow
def test_volume_predicts_the_series_per_backend_and_splits_the_time(tmp_path, monkeypatch):
    import os

    import nibabel as nib
    import pydicom

    from benchmarks import volume
    from lsnet_tf.inference.readers import read_input

    # The synthetic series: air in the corner, soft tissue in the middle, the geometry it says.
    assert len(volume.write_series(str(tmp_path / "small"), 3, 32)) == 3
    small = read_input(str(tmp_path / "small"))
    assert small.kind == "dicom" and small.hu.shape == (3, 32, 32)
    assert small.spacing == pytest.approx((0.7, 0.7, 2.5))
    assert abs(small.hu[0, 0, 0] + 1000) < 100 and abs(small.hu[0, 16, 4] - 40) < 100

    monkeypatch.setenv("LSNET_BENCH_TMP", str(tmp_path / "scratch"))
    bench = volume.run(quick=True)  # raises if a child's oneDNN is not what it was asked for
    n = volume.QUICK["slices"]
    assert bench["volume_shape"] == [n, volume.QUICK["image"], volume.QUICK["image"]]
    assert [(r["backend"], r["round"]) for r in bench["rows"]] == [
        (b, 1) for b in volume.QUICK["backends"]]
    rows = {r["backend"]: r for r in bench["rows"]}
    for backend, row in rows.items():
        assert row["read s"] > 0 and row["inference s"] > 0 and row["write s"] > 0
        assert row["read s"] + row["inference s"] + row["write s"] == pytest.approx(
            row["end-to-end s"], abs=0.003)
        # The columns are rounded to ms: a ratio of two of them may be off by their rounding.
        for ratio, den in (("end-to-end / inference", row["inference alone s"]),
                           ("/ SavedModel (oneDNN on)", rows[volume.SAVED_ON]["end-to-end s"])):
            expected = row["end-to-end s"] / den
            slack = expected * (5e-4 / row["end-to-end s"] + 5e-4 / den) + 1e-3
            assert row[ratio] == pytest.approx(expected, abs=slack)
        # S-Net's raised bias: a mask on every slice, so the SEG has a frame per slice.
        assert row["slices with mask"] == n
        mask = nib.load(os.path.join(bench["outputs"][backend], "mask.nii.gz"))
        assert mask.shape == tuple(bench["volume_shape"]) and np.asarray(mask.dataobj).any()
        seg = pydicom.dcmread(os.path.join(bench["outputs"][backend], "mask.seg.dcm"))
        assert seg.Modality == "SEG" and int(seg.NumberOfFrames) == n
    assert rows[volume.SAVED_ON]["/ SavedModel (oneDNN on)"] == 1
    targets = {t["name"]: t for t in bench["targets"]}
    phase = [f"{b}: end to end / inference alone" for b in (volume.SAVED_ON, volume.SAVED_OFF,
                                                             volume.LITERT_F32)]
    litert = f"{volume.LITERT_F32} / {volume.SAVED_ON}, end to end"
    assert list(targets) == [*phase, litert]
    for name, backend in zip(phase, (volume.SAVED_ON, volume.SAVED_OFF, volume.LITERT_F32)):
        assert targets[name]["measured"] == pytest.approx(rows[backend]["end-to-end / inference"],
                                                          abs=1e-3)
        assert targets[name]["met"] == (targets[name]["measured"] <= volume.PHASE_TARGET)
    assert targets[litert]["measured"] == pytest.approx(
        rows[volume.LITERT_F32]["/ SavedModel (oneDNN on)"], abs=1e-3)
    assert targets[litert]["met"] == (targets[litert]["measured"] <= volume.LITERT_TARGET)
