"""One SavedModel of several exported SavedModels (``lsnet_tf.export.ensemble``, issue 31).

Known answers: members whose probability is a known function of the input (``clip(hu / 1000 +
level + slope * column, 0, 1)``, with detections filled with a known value) give the hand-computed
mean, a mask that is 0 where the mean is exactly 0.5, and the first member's detections, and the
written ensemble of such members gives exactly what ``predict``'s `EnsemblePredictor` gives on
them; in the graph, the tiny random L-SNet with such members gives exactly `EnsemblePredictor`'s
mean and mask in any member order and with mirroring; an ensemble of one model, or of a model and
itself, gives the model's outputs bit for bit; the signatures equal a member's (names, dtypes,
shapes); the session loader of TF Serving (``saved_model_cli run``) runs it in a fresh process;
members that differ are the error ``predict`` gives, naming both.
"""
import contextlib
import io
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml

from lsnet_tf.export import cli, saved_model
from lsnet_tf.export import ensemble as export_ensemble
from lsnet_tf.inference import ensemble, predictors
from lsnet_tf.inference.readers import PredictError

VENV_BIN = os.path.dirname(sys.executable)
K = 4  # data.max_boxes of the tiny model


def fake_member(folder, level, slope=0.0, fill=1.0, **data):
    """A SavedModel with an exported model's signatures and config whose ``probability`` is
    ``clip(hu / 1000 + level + slope * column, 0, 1)`` (`level` a variable, as a model's weights
    are) and whose detections are all `fill`; returns the version folder."""

    class Fake(tf.Module):
        def __init__(self):
            super().__init__()
            self.level = tf.Variable(level, dtype=tf.float32)

        def run(self, hu):
            hu = tf.ensure_shape(tf.cast(hu, tf.float32), [None, None, None])
            column = tf.cast(tf.range(tf.shape(hu)[2]), tf.float32)
            prob = tf.clip_by_value(hu / 1000.0 + self.level + slope * column, 0.0, 1.0)[..., None]
            n = tf.shape(hu)[0]
            return {"probability": prob, "mask": tf.cast(prob > 0.5, tf.uint8),
                    "keypoints": tf.fill([n, K, 2], fill), "scores": tf.fill([n, K], fill),
                    "boxes": tf.fill([n, K, 4], fill), "valid": tf.fill([n, K], fill > 0)}

        @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="hu")])
        def serve(self, hu):
            return self.run(hu)

        @tf.function(input_signature=[tf.TensorSpec(None, tf.int16, name="hu")])
        def serve_int16(self, hu):
            return self.run(hu)

    module = Fake()
    path = str(folder / "1")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve,
                                                  "serving_int16": module.serve_int16})
    config = {"data": {"image_size": 64, "window_center": 40.0, "window_width": 400.0,
                       "dataset": "", **data}, "model": {"num_classes": 1}}
    os.makedirs(os.path.join(path, "assets.extra"))
    with open(os.path.join(path, "assets.extra", "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    return path


def clip_prob(hu, level, slope=0.0):
    """The fake member's probability in float64 (the graph computes it in float32)."""
    column = np.arange(hu.shape[2], dtype=np.float64)
    return np.clip(hu / 1000.0 + level + slope * column, 0.0, 1.0)[..., None]


def specs(signature):
    """Names, dtypes and shapes of a signature's inputs and outputs."""
    inputs = {v.name: (v.dtype, v.shape.as_list() if v.shape.rank is not None else None)
              for v in tf.nest.flatten(signature.structured_input_signature)}
    outputs = {k: (v.dtype, v.shape.as_list()) for k, v in signature.structured_outputs.items()}
    return inputs, outputs


def outputs_of(signature, hu):
    return {k: v.numpy() for k, v in signature(hu=tf.constant(hu)).items()}


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_members")
    return [fake_member(root / f"m{i}", level, fill=float(i + 1))
            for i, level in enumerate((0.25, 0.75, 0.5))]


@pytest.fixture(scope="module")
def real(tiny_saved_model):
    """The tiny random L-SNet of conftest and its loaded predictor."""
    return tiny_saved_model, predictors.load_predictor(tiny_saved_model)


# ------------------------------------------------------------------ known answers


@pytest.fixture(scope="module")
def fake_ensemble(fakes, tmp_path_factory):
    """`fakes` as one SavedModel, written by the command: ``(version folder, its output)``."""
    base = tmp_path_factory.mktemp("fake_ensemble")
    argv = ["ensemble", "--out", str(base)]
    for member in fakes:
        argv += ["--model", member]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(argv) == 0
    return str(base / "ensemble" / "1"), printed.getvalue()


def test_the_mean_of_known_members_through_the_command(fakes, fake_ensemble):
    path, printed = fake_ensemble
    assert f"ensemble (3 views) written to {path}" in printed
    loaded = tf.saved_model.load(path)
    member = tf.saved_model.load(fakes[0])
    assert sorted(loaded.signatures) == sorted(member.signatures) == ["serving_default",
                                                                       "serving_int16"]
    for name in loaded.signatures:
        assert specs(loaded.signatures[name]) == specs(member.signatures[name])
    # Row 0: hu 0, the members' levels exactly (0.25, 0.75, 0.5): mean 0.5, not > 0.5.
    # Row 1: hu 100: 0.35, 0.85, 0.6: mean 0.6. Row 2: hu -300: 0, 0.45, 0.2: mean 0.2167.
    hu = np.zeros((2, 3, 5), np.float32)
    hu[:, 1], hu[:, 2] = 100.0, -300.0
    hu[1] += np.linspace(-40, 40, 5, dtype=np.float32)  # another slice, varying by column
    want = np.mean([clip_prob(hu, level) for level in (0.25, 0.75, 0.5)], axis=0)
    np.testing.assert_allclose(want[0, :, 0, 0], [0.5, 0.6, 0.65 / 3], atol=1e-12)
    for name, x in (("serving_default", hu), ("serving_int16", hu.astype(np.int16))):
        out = outputs_of(loaded.signatures[name], x)
        assert out["probability"].dtype == np.float32 and out["mask"].dtype == np.uint8
        np.testing.assert_allclose(out["probability"], want, atol=1e-6)
        np.testing.assert_array_equal(out["mask"], (want > 0.5).astype(np.uint8))
        assert out["probability"][0, 0, 0, 0] == 0.5 and out["mask"][0, 0, 0, 0] == 0
        np.testing.assert_array_equal(out["mask"][0, :, 0, 0], [0, 1, 0])
        for key, shape in (("boxes", (2, K, 4)), ("scores", (2, K)), ("keypoints", (2, K, 2))):
            np.testing.assert_array_equal(out[key], np.ones(shape))  # the first member's (1.0)
        np.testing.assert_array_equal(out["valid"], True)
    # The metadata predict and check_members read: the first member's config, the members.
    with open(os.path.join(fakes[0], "assets.extra", "config.yaml"), "rb") as f:
        first_config = f.read()
    with open(os.path.join(path, "assets.extra", "config.yaml"), "rb") as f:
        assert f.read() == first_config
    assert ensemble.read_spec(path) == ensemble.read_spec(fakes[0])
    manifest = export_ensemble.read_manifest(os.path.dirname(path))
    assert [m["path"] for m in manifest["members"]] == [os.path.abspath(m) for m in fakes]
    assert manifest["tta"] == "none" and manifest["views"] == 3
    assert manifest["detections_from"] == os.path.abspath(fakes[0])
    # As predict loads it: one model, its window read from the config, and the outputs of
    # predict's ensemble of the members bit for bit.
    predictor = predictors.load_predictor(os.path.dirname(path))
    assert predictor.window == (40.0, 400.0) and predictor.format == "saved_model"
    got = predictor.predict(hu)
    members = [(m, predictors.load_predictor(m)) for m in fakes]
    want = ensemble.EnsemblePredictor(members).predict(hu)
    np.testing.assert_array_equal(got["probability"], want["probability"])
    np.testing.assert_array_equal(got["mask"], want["mask"])
    # Empty batch, and a rank error with a single model's message (before any mirror).
    empty = outputs_of(loaded.signatures["serving_default"], np.zeros((0, 3, 5), np.float32))
    assert empty["probability"].shape == (0, 3, 5, 1) and empty["boxes"].shape == (0, K, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="hu must be a batch of slices"):
        loaded.signatures["serving_default"](hu=tf.zeros([3, 5]))


def test_in_the_graph_the_order_of_members_and_mirrors_match_predict(fakes, real):
    """The graph's mean equals `EnsemblePredictor`'s bit for bit, in any member order, with
    and without mirroring (members not mirror-equivariant: a slope along the columns)."""
    path, model = real
    root = pathlib.Path(fakes[0]).parent.parent
    sloped = fake_member(root / "sloped", 0.6, slope=0.01, fill=-1.0)
    loaded = [model.module, tf.saved_model.load(sloped), tf.saved_model.load(fakes[0])]
    members = [(path, model), (sloped, predictors.load_predictor(sloped)),
               (fakes[0], predictors.load_predictor(fakes[0]))]
    hu = np.random.default_rng(3).uniform(-300, 300, (2, 24, 28)).astype(np.float32)
    for tta, order in (("none", [0, 1, 2]), ("none", [2, 0, 1]), ("flip", [1, 0])):
        graph = export_ensemble.EnsembleModule(loaded, order, tta).concrete_signatures(
            ["serving_default"])
        got = outputs_of(graph["serving_default"], hu)
        want = ensemble.EnsemblePredictor([members[i] for i in order], tta=tta).predict(hu)
        np.testing.assert_array_equal(got["probability"], want["probability"])
        np.testing.assert_array_equal(got["mask"], want["mask"])
        assert 0 < want["mask"].sum() < want["mask"].size
        first = members[order[0]][1].predict(hu)  # detections: the first member's, unmirrored
        for key in ("boxes", "scores", "keypoints", "valid"):
            np.testing.assert_array_equal(got[key], first[key])


def test_an_ensemble_of_one_model_or_of_a_model_and_itself_is_the_model(real):
    path, model = real
    hu = np.random.default_rng(1).uniform(-300, 300, (3, 40, 50)).astype(np.float32)
    alone = model.predict(hu)
    assert alone["mask"].sum() > 0
    for order in ([0], [0, 0]):
        module = export_ensemble.EnsembleModule([model.module], order)
        assert module.views == len(order)
        graph = module.concrete_signatures(["serving_default"])
        assert specs(graph["serving_default"]) == specs(model.signature)
        got = outputs_of(graph["serving_default"], hu)
        assert sorted(got) == sorted(alone)
        for key in alone:
            np.testing.assert_array_equal(got[key], alone[key])


@pytest.mark.slow
def test_saved_model_cli_runs_it_in_a_fresh_process(fake_ensemble, tmp_path):
    """``saved_model_cli run``: a fresh process and the session loader of TF Serving, which
    needs the members' variables tracked on the ensemble (floats within 1e-5 of
    ``tf.saved_model.load``'s, as for a single model: the session runs other kernels)."""
    path, _ = fake_ensemble
    hu = np.random.default_rng(4).uniform(-300, 300, (2, 6, 7)).astype(np.float32)
    got = outputs_of(tf.saved_model.load(path).signatures["serving_default"], hu)
    np.save(tmp_path / "hu.npy", hu)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [os.path.join(VENV_BIN, "saved_model_cli"), "run", "--dir", path, "--tag_set", "serve",
         "--signature_def", "serving_default", "--inputs", f"hu={tmp_path / 'hu.npy'}",
         "--outdir", str(tmp_path / "cli")], capture_output=True, text=True, env=env,
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for key in saved_model.OUTPUT_NAMES:
        cli_out = np.load(tmp_path / "cli" / f"{key}.npy")
        assert cli_out.dtype == got[key].dtype and cli_out.shape == got[key].shape
        np.testing.assert_allclose(cli_out.astype(np.float64), got[key].astype(np.float64),
                                   atol=1e-5, rtol=0)
    want = np.mean([clip_prob(hu, level) for level in (0.25, 0.75, 0.5)], axis=0)
    np.testing.assert_allclose(np.load(tmp_path / "cli" / "probability.npy"), want, atol=1e-5)


# ------------------------------------------------------------------ errors


def test_members_that_differ_are_predict_s_error_naming_both(fakes, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.setattr(tf.saved_model, "load", lambda *a, **k: pytest.fail("model loaded"))
    other = fake_member(tmp_path / "other", 0.5, window_center=50.0, window_width=350.0)
    message = (f"ensemble members differ in HU window: {fakes[0]} has center 40, width 400 HU, "
               f"{other} has center 50, width 350 HU")
    with pytest.raises(ensemble.MemberError) as error:
        export_ensemble.export([fakes[0], other], str(tmp_path / "out" / "1"))
    assert message in str(error.value)
    with pytest.raises(PredictError) as error:  # predict's own check, the same words
        predictors.resolve_models([fakes[0], other])
    assert message in str(error.value)
    assert cli.main(["ensemble", "--model", fakes[0], "--model", other, "--out",
                     str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    (tmp_path / "lsnet.tflite").write_bytes(b"not loaded")
    with pytest.raises(ensemble.MemberError, match="a .tflite file cannot be a member"):
        export_ensemble.export([fakes[0], str(tmp_path / "lsnet.tflite")],
                               str(tmp_path / "out" / "1"))
    with pytest.raises(ValueError, match="cannot be written over or inside its member"):
        export_ensemble.export([fakes[0]], fakes[0])
    with pytest.raises(ValueError, match="tta must be one of none, flip, flip2"):
        export_ensemble.export([fakes[0]], str(tmp_path / "out" / "1"), tta="mirror")
    assert not (tmp_path / "out").exists()


def test_the_command_s_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["ensemble", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "docs/deployment.md" in text and len(text.splitlines()) < 40
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert "python -m lsnet_tf.export ensemble --model A" in capsys.readouterr().out
    for argv, message in ((["ensemble", "--out", "x"], "--model"),
                          (["ensemble", "--model", "a", "--out", "x", "--version", "0"],
                           "--version must be >= 1"),
                          (["ensemble", "--model", "a", "--out", "x", "--tta", "up"], "--tta")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
