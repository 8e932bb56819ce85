"""Deployment exports: the TF Serving SavedModel, TFLite (float32/fp16/int8), TF-TRT, the CLI.

References: the Keras model's own inference path (``LSNet.predict_masks``) on the windowed,
resized slice; ``saved_model_cli run`` (the session-based loader TF Serving uses); hand-computed
windowing and box scaling. A tiny random model (width 8, 64 x 64) whose heatmap head is scaled so
that several RoIs per image are valid exercises RR and the paste; the int8 check needs a model
that predicts masks, so a module fixture trains one on an easy synthetic set (slow).
"""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY as SHARED_TINY
from lsnet_tf.config import load_config
from lsnet_tf.data.pipeline import window
from lsnet_tf.export import cli, saved_model, tflite, tftrt
from lsnet_tf.models.build import build_model

# The shared tiny model (tests/conftest.py), at width 8 for this file's models (the exported
# random model and the trained fixture).
TINY = [*SHARED_TINY, "model.width=8"]
SIZE = 64
VENV_BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(overrides=()):
    """A tiny random L-SNet whose heatmap crosses 0.5 in places (several valid RoIs)."""
    cfg = load_config(None, TINY + list(overrides))
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    head = model.lnet.get_layer("kp_logits")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 4.0, bias + 2.0])  # logits spread around 0, not saturated
    return model, cfg


def hu_batch(n=2, h=SIZE, w=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(-300, 300, (n, h, w)).astype(np.float32)


def reference(model, cfg, hu):
    """The Keras path on the model grid: predict_masks(window(resize(hu)))."""
    image = saved_model.preprocess(hu, model.image_size, cfg.data.window_center,
                                   cfg.data.window_width)
    return {k: v.numpy() for k, v in model.predict_masks(image).items()}


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    model, cfg = tiny
    base = tmp_path_factory.mktemp("saved_models")
    path = saved_model.export(model, cfg, saved_model.serving_path(str(base), "lsnet", 1))
    return path, tf.saved_model.load(path)


# ------------------------------------------------------------------ pre/post-processing


def test_preprocess_windows_hu_like_the_pipeline():
    hu = np.array([[[-1000.0, -160.0, 40.0], [240.0, 3000.0, 140.0]]], np.float32)  # (1, 2, 3)
    out = saved_model.preprocess(hu, (2, 3), 40.0, 400.0).numpy()[0, ..., 0]
    # window [-160, 240]: (hu + 160) / 400, clipped; same size -> no resampling
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5], [1.0, 1.0, 0.75]], atol=1e-7)
    np.testing.assert_allclose(out, window(hu[0], 40.0, 400.0).numpy(), atol=1e-7)


def test_preprocess_resizes_before_windowing():
    # Two columns -1000 and 0 HU resized 2 -> 4 wide: bilinear gives -1000, -750, -250, 0 HU,
    # which window to 0, 0, 0, 0.4. Windowing first would give 0, 0.1, 0.3, 0.4.
    hu = np.array([[[-1000.0, 0.0]]], np.float32)
    out = saved_model.preprocess(hu, (1, 4), 40.0, 400.0).numpy()[0, 0, :, 0]
    np.testing.assert_allclose(out, [0.0, 0.0, 0.0, 0.4], atol=1e-6)


def test_postprocess_scales_boxes_and_keypoints_to_the_input_grid():
    pred = {"mask": tf.fill([1, 4, 4, 1], 0.75),
            "keypoints": tf.constant([[[2.0, 1.0]]]), "scores": tf.constant([[0.9]]),
            "boxes": tf.constant([[[1.0, 0.0, 3.0, 2.0]]]), "valid": tf.constant([[True]])}
    out = saved_model.postprocess(pred, 8, 12, (4, 4))  # height 8 (x2), width 12 (x3)
    np.testing.assert_allclose(out["keypoints"].numpy(), [[[6.0, 2.0]]])
    np.testing.assert_allclose(out["boxes"].numpy(), [[[3.0, 0.0, 9.0, 4.0]]])
    assert out["probability"].shape == (1, 8, 12, 1)
    np.testing.assert_allclose(out["probability"].numpy(), 0.75, atol=1e-6)
    assert out["mask"].dtype == tf.uint8 and int(out["mask"].numpy().min()) == 1


def test_serving_path_layout_and_errors():
    assert saved_model.serving_path("saved_models", "lsnet", 3) == os.path.join(
        "saved_models", "lsnet", "3")
    with pytest.raises(ValueError, match="version must be an integer >= 1, received 0"):
        saved_model.serving_path("x", "lsnet", 0)
    with pytest.raises(ValueError, match="plain folder name"):
        saved_model.serving_path("x", "a/b", 1)


# ------------------------------------------------------------------ SavedModel


@pytest.mark.slow
def test_saved_model_layout_signatures_and_config(exported, tiny):
    path, loaded = exported
    _, cfg = tiny
    assert path.endswith(os.path.join("lsnet", "1"))
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert not os.path.exists(path + ".tmp")
    assert load_config(os.path.join(path, "assets.extra", "config.yaml")) == cfg
    assert set(loaded.signatures) == {"serving_default", "serving_int16"}
    for name, dtype in (("serving_default", tf.float32), ("serving_int16", tf.int16)):
        sig = loaded.signatures[name]
        spec = sig.structured_input_signature[1]["hu"]
        assert spec.dtype == dtype
        assert set(sig.structured_outputs) == set(saved_model.OUTPUT_NAMES)


@pytest.mark.slow
def test_saved_model_matches_keras_at_the_model_size(exported, tiny):
    model, cfg = tiny
    _, loaded = exported
    hu = hu_batch()
    out = loaded.signatures["serving_default"](hu=tf.constant(hu))
    out = {k: v.numpy() for k, v in out.items()}
    ref = reference(model, cfg, hu)
    assert ref["valid"].sum() >= 2  # RR and the paste are exercised
    np.testing.assert_allclose(out["probability"], ref["mask"], atol=1e-5)
    for key in ("keypoints", "scores", "boxes"):
        np.testing.assert_allclose(out[key], ref[key], atol=1e-5)
    np.testing.assert_array_equal(out["valid"], ref["valid"])
    np.testing.assert_array_equal(out["mask"], (out["probability"] > 0.5).astype(np.uint8))
    assert out["mask"].dtype == np.uint8


@pytest.mark.slow
def test_saved_model_any_size_resizes_in_and_out(exported, tiny):
    model, cfg = tiny
    _, loaded = exported
    hu = hu_batch(1, 50, 70, seed=1)
    out = loaded.signatures["serving_default"](hu=tf.constant(hu))
    ref = reference(model, cfg, hu)
    assert out["probability"].shape == (1, 50, 70, 1)
    expected = tf.image.resize(ref["mask"], (50, 70), method="bilinear").numpy()
    np.testing.assert_allclose(out["probability"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out["keypoints"].numpy(), ref["keypoints"] * [70 / 64, 50 / 64],
                               atol=1e-4)
    np.testing.assert_allclose(out["boxes"].numpy(),
                               ref["boxes"] * [70 / 64, 50 / 64, 70 / 64, 50 / 64], atol=1e-4)


@pytest.mark.slow
def test_int16_signature_equals_float_signature(exported):
    _, loaded = exported
    hu = np.round(hu_batch(seed=2))
    a = loaded.signatures["serving_int16"](hu=tf.constant(hu.astype(np.int16)))
    b = loaded.signatures["serving_default"](hu=tf.constant(hu))
    for key in saved_model.OUTPUT_NAMES:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


@pytest.mark.slow
def test_empty_batch_returns_empty_outputs(exported):
    _, loaded = exported
    out = loaded.signatures["serving_default"](hu=tf.zeros([0, 30, 40]))
    assert out["probability"].shape == (0, 30, 40, 1) and out["mask"].shape == (0, 30, 40, 1)
    assert out["keypoints"].shape == (0, 4, 2) and out["boxes"].shape == (0, 4, 4)
    assert out["scores"].shape == (0, 4) and out["valid"].shape == (0, 4)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(64, 64), (1, 64, 64, 1), (2, 8, 8, 3)])
def test_wrong_rank_is_invalid_argument_naming_the_expected_layout(exported, shape):
    _, loaded = exported
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"hu must be a batch of slices \(batch, height, width\)"):
        loaded.signatures["serving_default"](hu=tf.zeros(shape))


@pytest.mark.slow
def test_wrong_dtype_and_empty_slices_are_invalid_argument(exported):
    _, loaded = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor"):
        loaded.signatures["serving_default"](hu=tf.zeros([1, 8, 8], tf.int16))
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 1 x 1 pixels"):
        loaded.signatures["serving_default"](hu=tf.zeros([1, 0, 8]))


@pytest.mark.slow
def test_saved_model_cli_run_matches_tf_saved_model_load(exported, tmp_path):
    """``saved_model_cli run`` loads through a session, as TF Serving does."""
    path, loaded = exported
    hu = hu_batch(2, 48, 56, seed=3)
    np.save(tmp_path / "hu.npy", hu)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    cli_bin = os.path.join(VENV_BIN, "saved_model_cli")
    result = subprocess.run(
        [cli_bin, "run", "--dir", path, "--tag_set", "serve", "--signature_def",
         "serving_default", "--inputs", f"hu={tmp_path / 'hu.npy'}", "--outdir",
         str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = loaded.signatures["serving_default"](hu=tf.constant(hu))
    for key in saved_model.OUTPUT_NAMES:
        got = np.load(tmp_path / "out" / f"{key}.npy")
        assert got.shape == tuple(out[key].shape)
        np.testing.assert_allclose(got.astype(np.float32), out[key].numpy().astype(np.float32),
                                   atol=1e-5)
    np.save(tmp_path / "bad.npy", hu[0])
    bad = subprocess.run(
        [cli_bin, "run", "--dir", path, "--tag_set", "serve", "--signature_def",
         "serving_default", "--inputs", f"hu={tmp_path / 'bad.npy'}"],
        capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode != 0
    assert "InvalidArgumentError" in bad.stderr
    assert "hu must be a batch of slices (batch, height, width)" in bad.stderr
    assert "[48 56]" in bad.stderr  # the shape received


# ------------------------------------------------------------------ TFLite


def builtin_op_names(interpreter):
    return {op["op_name"] for op in interpreter._get_ops_details()}


@pytest.fixture(scope="module")
def tflite_float(tiny, tmp_path_factory):
    model, cfg = tiny
    path = str(tmp_path_factory.mktemp("tflite") / "lsnet.tflite")
    return tflite.export(model, cfg, path)


@pytest.mark.slow
def test_tflite_float32_matches_keras_with_builtin_ops_only(tflite_float, tiny):
    model, cfg = tiny
    runner = tflite.TFLiteModel(tflite_float)
    assert runner.image_size == (SIZE, SIZE)
    ops = builtin_op_names(runner.interpreter)
    # connected components (WHILE, UNSORTED_SEGMENT_*) and the RR sampler (GATHER) are inside
    assert {"WHILE", "UNSORTED_SEGMENT_MAX", "GATHER", "TOPK_V2", "CONV_2D"} <= ops
    assert not any(op.startswith("Flex") or op == "CUSTOM" for op in ops)
    hu = hu_batch(3, seed=4)
    ref = reference(model, cfg, hu)
    assert ref["valid"].sum() >= 3
    for i in range(3):
        out = runner(hu[i:i + 1])
        np.testing.assert_allclose(out["probability"], ref["mask"][i:i + 1], atol=1e-4)
        np.testing.assert_allclose(out["boxes"], ref["boxes"][i:i + 1], atol=1e-4)
        np.testing.assert_allclose(out["keypoints"], ref["keypoints"][i:i + 1], atol=1e-4)
        np.testing.assert_allclose(out["scores"], ref["scores"][i:i + 1], atol=1e-4)
        np.testing.assert_array_equal(out["valid"], ref["valid"][i:i + 1])


@pytest.mark.slow
def test_tflite_metadata_and_input_checks(tflite_float, tiny):
    _, cfg = tiny
    meta = tflite.read_metadata(tflite_float)
    assert meta["image_size"] == [SIZE, SIZE] and meta["quantize"] == "none"
    assert meta["window_center"] == cfg.data.window_center
    assert meta["window_width"] == cfg.data.window_width
    assert meta["max_rois"] == 4 and meta["select_tf_ops"] is False
    runner = tflite.TFLiteModel(tflite_float)
    with pytest.raises(ValueError,
                       match=r"takes hu of shape \(1, 64, 64\), received \(1, 32, 32\)"):
        runner(np.zeros((1, 32, 32), np.float32))


@pytest.mark.slow
def test_tflite_fp16_is_close_to_float32(tiny, tmp_path):
    model, cfg = tiny
    path = tflite.export(model, cfg, str(tmp_path / "fp16.tflite"), quantize="fp16")
    assert tflite.read_metadata(path)["quantize"] == "fp16"
    runner = tflite.TFLiteModel(path)
    hu = hu_batch(1, seed=5)
    ref = reference(model, cfg, hu)
    out = runner(hu)
    np.testing.assert_allclose(out["probability"], ref["mask"], atol=2e-2)
    np.testing.assert_array_equal(out["valid"], ref["valid"])


def test_tflite_argument_errors(tiny):
    model, cfg = tiny
    with pytest.raises(ValueError,
                       match="quantize must be one of none, fp16, int8, received 'int4'"):
        tflite.convert(model, cfg, quantize="int4")
    with pytest.raises(ValueError, match="int8 quantization needs a representative dataset"):
        tflite.convert(model, cfg, quantize="int8")
    with pytest.raises(ValueError, match="ends in .tflite"):
        tflite.export(model, cfg, "model.bin")


# ------------------------------------------------------------------ TF-TRT


def test_tftrt_names_what_is_missing_here():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible: the no-GPU message is not produced")
    missing = tftrt.missing_requirements()
    assert any(m.startswith("no GPU") for m in missing)
    with pytest.raises(tftrt.TensorRTUnavailableError,
                       match="TF-TRT cannot run on this machine: no GPU"):
        tftrt.check_available()


def test_tftrt_reports_missing_tensorrt_libraries():
    from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils

    if _pywrap_py_utils.is_tensorrt_enabled():
        pytest.skip("TensorRT is installed here")
    text = " ".join(tftrt.missing_requirements())
    assert "TensorRT" in text and ("libraries not found" in text or "not linked" in text)


def test_tftrt_export_checks_precision_then_availability(tiny, tmp_path):
    model, cfg = tiny
    with pytest.raises(ValueError, match="precision must be one of FP32, FP16, received 'INT8'"):
        tftrt.export(model, cfg, str(tmp_path / "trt"), precision="int8")
    if not tftrt.missing_requirements():
        pytest.skip("TF-TRT is available here")
    with pytest.raises(tftrt.TensorRTUnavailableError):
        tftrt.export(model, cfg, str(tmp_path / "trt"))
    assert not (tmp_path / "trt").exists()


# ------------------------------------------------------------------ CLI


def test_cli_tftrt_without_gpu_fails_fast_with_the_reason(tmp_path, capsys):
    if not tftrt.missing_requirements():
        pytest.skip("TF-TRT is available here")
    code = cli.main(["--run", str(tmp_path / "no_run"), "--format", "tftrt", "--out",
                     str(tmp_path / "trt")])
    assert code == 1
    assert "TF-TRT cannot run on this machine" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--format", "saved_model", "--quantize", "int8"], "not available for --format saved_model"),
    (["--format", "tftrt", "--quantize", "int8"], "not available for --format tftrt"),
    (["--format", "tflite", "--out", "model.bin"], "must end in .tflite"),
    (["--format", "saved_model", "--allow-select-tf-ops"], "applies to --format tflite only"),
    (["--format", "onnx"], "invalid choice: 'onnx'"),
])
def test_cli_argument_errors(argv, message, capsys):
    if "--out" not in argv:
        argv = argv + ["--out", "out"]
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--run", "run"] + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_load_run_errors(tmp_path):
    with pytest.raises(cli.RunError, match="run folder not found"):
        cli.load_run(str(tmp_path / "missing"))
    with pytest.raises(cli.RunError, match="no config.yaml"):
        cli.load_run(str(tmp_path))
    load_config(None, TINY).save(str(tmp_path / "config.yaml"))
    with pytest.raises(cli.RunError, match="no checkpoint found"):
        cli.load_run(str(tmp_path))
    with pytest.raises(cli.RunError, match="checkpoint not found"):
        cli.load_run(str(tmp_path), checkpoint=str(tmp_path / "ckpt-7"))


@pytest.mark.slow
def test_load_run_restores_the_checkpointed_weights(tiny, tmp_path):
    model, cfg = tiny
    cfg.save(str(tmp_path / "config.yaml"))
    # What the trainer writes: both networks and more (here a stand-in for the optimizers).
    extra = tf.Variable(3.0)
    tf.train.Checkpoint(lnet=model.lnet, snet=model.snet, epoch=extra).save(
        str(tmp_path / "checkpoints" / "ckpt"))
    restored, cfg2, path = cli.load_run(str(tmp_path))
    assert cfg2 == cfg and path.endswith("ckpt-1")
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # a config that does not match the checkpoint is refused, not silently half-restored
    load_config(None, TINY + ["model.width=16"]).save(str(tmp_path / "config.yaml"))
    with pytest.raises(cli.RunError, match="does not hold every weight"):
        cli.load_run(str(tmp_path))


# ------------------------------------------------------------------ trained model: int8 and CLI

EASY = TINY + [
    "data.synthetic.num_patients=8", "data.synthetic.slices_per_patient=16",
    "data.synthetic.folds=2", "data.synthetic.image_size=64",
    "data.synthetic.min_target_size=16", "data.synthetic.max_target_size=28",
    "data.synthetic.contrast_hu=300", "data.synthetic.noise_hu=10",
    "data.synthetic.empty_fraction=0.0", "data.batch_size=8", "data.deterministic=true",
    "train.epochs=24", "train.learning_rate=0.005", "train.lr_decay_epochs=100",
    "train.gt_box_epochs=3", "train.deterministic=true", "model.threshold=0.3",
    "train.image_log_epochs=0", "train.verbose=0", "train.strategy=default", "export.dir=",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny L-SNet trained on an easy synthetic set until it predicts masks (about a minute).

    Deterministic (``train.deterministic``): per-slice validation DSC 0.92 (worst slice 0.79)
    on the 2-core CPU this was measured on, against the > 0.5 the tests need; 0.96 and 0.94 with
    train.seed 2 and 3 (a stand-in for another machine's rounding). Two settings make that
    margin: targets of at least 16 px (with 12 px ones it reached 0.41 deterministically; 0.39
    and 0.90 in runs before determinism) and the heatmap threshold 0.3: after 24 epochs the
    heatmap's peaks sit around 0.5 (median 0.57), and at threshold 0.5 the slices whose peak
    stayed below it got no RoI and DSC 0 (seed 2: DSC 0.62; seed 3 as low as 0.31).

    ``session.run`` turns TensorFlow's op determinism on for the process; it is turned off again
    afterwards (TensorFlow's own ``disable_op_determinism``), so that the tests after this
    module run as they would without it."""
    from tensorflow.python.framework import config as tf_config

    from lsnet_tf.training import session

    root = tmp_path_factory.mktemp("trained")
    cfg = load_config(None, EASY + [f"data.cache_dir={root / 'cache'}",
                                    f"train.output_dir={root / 'run'}"])
    was_deterministic = tf_config.is_op_determinism_enabled()
    try:
        summary = session.run(cfg, log=lambda *args: None)
    finally:
        if not was_deterministic:
            tf_config.disable_op_determinism()
    return str(root / "run"), summary


def validation_slices(cfg, n=64):
    from lsnet_tf.data import pipeline, records

    dataset_dir = pipeline.resolve_dataset(cfg.data)
    val = records.split_folds(dataset_dir, cfg.data.val_fold, "val")
    ds = pipeline.make_dataset(cfg.data, dataset_dir, val, training=False, batch_size=8)
    images = np.concatenate([b["image"].numpy() for b in ds], 0)[:n]
    low = cfg.data.window_center - cfg.data.window_width / 2.0
    return images[..., 0] * cfg.data.window_width + low  # raw HU that window back to `images`


def dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.mark.slow
def test_int8_tflite_agrees_with_float32_on_validation_slices(trained_run, tmp_path, capsys):
    run_dir, summary = trained_run
    assert summary["dsc"]["mean"] > 0.5, summary  # the fixture model does predict masks
    paths = {}
    for quantize in ("none", "int8"):
        out = str(tmp_path / f"lsnet_{quantize}.tflite")
        assert cli.main(["--run", run_dir, "--format", "tflite", "--quantize", quantize,
                         "--calibration-slices", "64", "--out", out]) == 0
        paths[quantize] = out
    assert "TFLite (int8) written to" in capsys.readouterr().out
    model, cfg, _ = cli.load_run(run_dir)
    hu = validation_slices(cfg)
    ref = reference(model, cfg, hu)
    predict = lambda r: np.concatenate([r(hu[i:i + 1])["probability"]  # noqa: E731
                                        for i in range(len(hu))])
    for runtime in ("tensorflow", "litert"):
        runs = {q: tflite.TFLiteModel(p, runtime=runtime) for q, p in paths.items()}
        outs = {q: predict(r) for q, r in runs.items()}
        np.testing.assert_allclose(outs["none"], ref["mask"], atol=1e-4)
        float_mask, int8_mask = outs["none"] > 0.5, outs["int8"] > 0.5
        assert float_mask.sum() > 1000  # enough foreground for the comparison to mean something
        assert dice(float_mask, int8_mask) >= 0.99, runtime
    # LiteRT in a fresh process, in the orders that broke its int8 masks under its defaults (DSC
    # 0.056 against float32, in runs of the interpreter created second or of one that another was
    # created after; TFLiteModel opens int8 files without delegate clustering since): A and B
    # created, then run A, B, A, B. The defect depends on the memory layout: a plain process
    # started in the repository showed it in every such order, a pytest process not always.
    np.save(tmp_path / "hu.npy", hu)
    np.save(tmp_path / "float_mask.npy", float_mask)
    script = textwrap.dedent(f"""
        import json, numpy as np
        from lsnet_tf.export.litert import TFLiteModel
        hu = np.load({str(tmp_path / "hu.npy")!r})
        want = np.load({str(tmp_path / "float_mask.npy")!r})
        paths = {paths!r}
        scores = []
        for a, b in (("none", "int8"), ("int8", "int8"), ("int8", "none")):
            models = {{"A": TFLiteModel(paths[a]), "B": TFLiteModel(paths[b])}}
            kinds = {{"A": a, "B": b}}
            for x in "ABAB":
                got = np.concatenate([models[x](hu[i:i + 1])["probability"]
                                      for i in range(len(hu))]) > 0.5
                if kinds[x] == "int8":
                    scores.append(2.0 * (got & want).sum() / (got.sum() + want.sum()))
        print(json.dumps(scores))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(scores) == 8 and min(scores) >= 0.99, scores
    runs = {q: tflite.TFLiteModel(p, runtime="tensorflow") for q, p in paths.items()}
    # The networks are int8 but for their output heads; the geometry (connected components in
    # WHILE, the sampler's segment max) is float32.
    interpreter = runs["int8"].interpreter
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    heads = [layer for net in (model.lnet, model.snet) for layer in tflite.head_layers(net)]
    assert {"kp_logits", "bbr_raw", "mask_conv"} <= set(heads)
    convs = [(names[op["outputs"][0]], dtypes[op["inputs"][0]])
             for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D"]
    is_head = [any(f"/{layer}" in name for layer in heads) for name, _ in convs]
    assert sum(is_head) == 3 and all(d == np.float32 for (_, d), h in zip(convs, is_head) if h)
    body = [d for (_, d), h in zip(convs, is_head) if not h]
    assert len(body) > 20 and all(d == np.int8 for d in body)
    segment = [dtypes[op["inputs"][0]] for op in interpreter._get_ops_details()
               if op["op_name"] == "UNSORTED_SEGMENT_MAX"]
    assert segment and all(d == np.float32 for d in segment)
    assert os.path.getsize(paths["int8"]) < 0.5 * os.path.getsize(paths["none"])


@pytest.mark.slow
def test_cli_saved_model_from_a_trained_run(trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    assert cli.main(["--run", run_dir, "--format", "saved_model", "--out",
                     str(tmp_path / "saved_models"), "--name", "pancreas", "--version", "3"]) == 0
    path = tmp_path / "saved_models" / "pancreas" / "3"
    assert (path / "saved_model.pb").is_file()
    assert f"saved_model written to {path}" in capsys.readouterr().out
    model, cfg, _ = cli.load_run(run_dir)
    hu = validation_slices(cfg, 4)
    out = tf.saved_model.load(str(path)).signatures["serving_default"](hu=tf.constant(hu))
    np.testing.assert_allclose(out["probability"].numpy(), reference(model, cfg, hu)["mask"],
                               atol=1e-5)


def test_calibration_and_engine_build_inputs_are_training_slices_in_hu(tmp_path):
    from lsnet_tf.data import pipeline, records

    cfg = load_config(None, TINY + [
        "data.synthetic.num_patients=4", "data.synthetic.slices_per_patient=2",
        "data.synthetic.folds=2", "data.synthetic.image_size=64",
        "data.synthetic.max_target_size=24", f"data.cache_dir={tmp_path / 'cache'}"])
    slices = tflite.representative_hu(cfg, 3)
    assert len(slices) == 3 and all(s.shape == (1, SIZE, SIZE) for s in slices)
    dataset_dir = pipeline.resolve_dataset(cfg.data)
    train_folds = records.split_folds(dataset_dir, cfg.data.val_fold, "train")
    images = next(iter(pipeline.make_dataset(cfg.data, dataset_dir, train_folds, training=False,
                                             batch_size=3)))["image"].numpy()[..., 0]
    # windowing the calibration HU gives back exactly the pipeline's training images
    np.testing.assert_allclose(window(np.concatenate(slices), 40.0, 400.0).numpy(), images,
                               atol=1e-6)
    batches = tftrt._build_inputs(cfg, num_batches=2, batch_size=2)
    assert [b.shape for b in batches] == [(2, SIZE, SIZE), (2, SIZE, SIZE)]
    with pytest.raises(ValueError, match="num_slices must be a positive integer, received 0"):
        tflite.representative_hu(cfg, 0)
