"""The ``.tflite`` path without TensorFlow (``lsnet_tf.export.litert``): LiteRT and numpy.

Known answers: the numpy bilinear resize equals ``tf.image.resize(method="bilinear")`` bit for
bit (upsampling, downsampling, non-square, mixed, identity, from 1 x 1) and the numpy
postprocess equals ``saved_model.postprocess``; the LiteRT predictor's outputs equal those of the
previous TensorFlow path (``tf.lite.Interpreter``, ``tf.image.resize``, ``saved_model.postprocess``)
on slices of other sizes than the model's; and a process in which importing TensorFlow, Keras or
tf_keras raises ImportError predicts a volume with ``python -m lsnet_tf.predict``'s code and
writes the same mask.
"""
import json
import os
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from lsnet_tf.export import litert, saved_model, tflite
from lsnet_tf.inference import volume

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A meta-path finder that makes TensorFlow, Keras and tf_keras unimportable in a child process.
BLOCK_TENSORFLOW = textwrap.dedent("""
    import importlib.abc, sys

    BLOCKED = ("tensorflow", "tf_keras", "keras")

    class NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed on this device")

    sys.meta_path.insert(0, NoTensorFlow())
""")


@pytest.fixture(scope="module")
def lite_file(tiny_tflite):
    """The session's tiny random model (several valid RoIs per slice) as a float32 ``.tflite``
    file (``tiny_tflite`` of conftest.py)."""
    return tiny_tflite


def tf_path_predict(path, hu):
    """The previous TFLite path of ``python -m lsnet_tf.predict``: TensorFlow's interpreter,
    ``tf.image.resize`` in and ``saved_model.postprocess`` out, one slice per invocation."""
    interpreter = tf.lite.Interpreter(model_path=path)
    runner = interpreter.get_signature_runner("serving_default")
    size = tuple(int(s) for s in runner.get_input_details()["hu"]["shape"][1:])
    outs = []
    for k in range(hu.shape[0]):
        resized = tf.image.resize(hu[k][None, :, :, None], size, method="bilinear")[..., 0]
        raw = runner(hu=resized.numpy())
        pred = {"mask": tf.constant(raw["probability"]), "keypoints": raw["keypoints"],
                "scores": raw["scores"], "boxes": raw["boxes"], "valid": raw["valid"]}
        out = saved_model.postprocess(pred, hu.shape[1], hu.shape[2], size)
        outs.append({n: np.asarray(v) for n, v in out.items()})
    return {n: np.concatenate([o[n] for o in outs], 0) for n in saved_model.OUTPUT_NAMES}


def hu_volume(shape, seed):
    return np.random.default_rng(seed).uniform(-300, 300, shape).astype(np.float32)


# ------------------------------------------------------------------ numpy against TensorFlow


def test_constants_and_reexports_match_the_tensorflow_modules():
    assert litert.OUTPUT_NAMES == saved_model.OUTPUT_NAMES
    assert litert.MASK_THRESHOLD == saved_model.MASK_THRESHOLD == volume.MASK_THRESHOLD
    assert tflite.TFLiteModel is litert.TFLiteModel
    assert tflite.read_metadata is litert.read_metadata


@pytest.mark.parametrize("shape, size", [
    ((2, 50, 60, 1), (64, 64)),  # upsampling, non-square input
    ((1, 64, 64, 1), (50, 60)),  # downsampling to non-square
    ((1, 512, 512, 1), (64, 64)),  # shrinking by 8 (no antialiasing)
    ((1, 7, 300, 3), (97, 13)),  # up in rows, down in columns, 3 channels
    ((1, 64, 64, 1), (64, 64)),  # the identity
    ((1, 1, 1, 2), (5, 3)),  # a single pixel
    ((3, 33, 17, 1), (64, 128)),
])
def test_resize_bilinear_equals_tf_image_resize(shape, size):
    images = np.random.default_rng(sum(shape)).uniform(-1000, 3000, shape).astype(np.float32)
    expected = tf.image.resize(images, size, method="bilinear").numpy()
    got = litert.resize_bilinear(images, size)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_resize_bilinear_by_hand():
    # 1 x 2 -> 1 x 4: columns sit at 0.25 - 0.5, 0.75 - 0.5, ... of the input: [0, 2.5, 7.5, 10]
    out = litert.resize_bilinear(np.array([[[[0.0], [10.0]]]], np.float32), (1, 4))
    np.testing.assert_allclose(out[0, 0, :, 0], [0.0, 2.5, 7.5, 10.0])


def test_resize_bilinear_errors():
    with pytest.raises(ValueError, match=r"takes \(n, H, W, C\) images, received shape \(4, 4\)"):
        litert.resize_bilinear(np.zeros((4, 4)), (2, 2))
    with pytest.raises(ValueError, match=r"to \(0, 2\): sizes must be at least 1 x 1"):
        litert.resize_bilinear(np.zeros((1, 4, 4, 1)), (0, 2))


@pytest.mark.parametrize("height, width", [(50, 60), (64, 64), (200, 90), (7, 3)])
def test_postprocess_equals_saved_model_postprocess(height, width):
    rng = np.random.default_rng(height * width)
    size = (64, 64)
    # probabilities around the threshold, so that the mask tests the comparison itself
    pred = {"mask": rng.uniform(0.45, 0.55, (2, *size, 1)).astype(np.float32),
            "keypoints": rng.uniform(0, 64, (2, 4, 2)).astype(np.float32),
            "scores": rng.uniform(0, 1, (2, 4)).astype(np.float32),
            "boxes": rng.uniform(0, 64, (2, 4, 4)).astype(np.float32),
            "valid": rng.uniform(0, 1, (2, 4)) > 0.5}
    expected = saved_model.postprocess({**pred, "mask": tf.constant(pred["mask"])},
                                       height, width, size)
    got = litert.postprocess(pred, height, width, size)
    assert list(got) == list(saved_model.OUTPUT_NAMES)
    for name in saved_model.OUTPUT_NAMES:
        want = np.asarray(expected[name])
        assert got[name].dtype == want.dtype, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert 0 < got["mask"].sum() < got["mask"].size


# ------------------------------------------------------------------ the LiteRT predictor


@pytest.mark.slow
def test_litert_predictor_equals_the_tensorflow_path(lite_file):
    predictor = litert.TFLitePredictor(lite_file, batch_size=2)
    assert predictor.model.runtime == "litert"
    assert predictor.model.num_threads == len(os.sched_getaffinity(0))  # not LiteRT's one thread
    assert predictor.window == (40.0, 400.0) and predictor.format == "tflite"
    for shape, seed in (((3, 50, 60), 3), ((1, 64, 64), 4), ((2, 97, 41), 5)):
        hu = hu_volume(shape, seed)
        want = tf_path_predict(lite_file, hu)
        got = predictor.predict(hu)
        assert list(got) == list(saved_model.OUTPUT_NAMES)
        np.testing.assert_allclose(got["probability"], want["probability"], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(got["mask"], want["mask"])
        np.testing.assert_array_equal(got["valid"], want["valid"])
        for name in ("keypoints", "scores", "boxes"):
            np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=0, err_msg=name)
        for name in saved_model.OUTPUT_NAMES:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
    assert want["mask"].sum() > 0 and want["valid"].sum() > 0


@pytest.mark.slow
def test_empty_batch_and_predictor_errors(lite_file, tmp_path):
    predictor = litert.TFLitePredictor(lite_file)
    out = predictor.predict(np.zeros((0, 30, 20), np.float32))
    assert out["probability"].shape == (0, 30, 20, 1) and out["mask"].dtype == np.uint8
    assert out["boxes"].shape == (0, 4, 4) and out["valid"].dtype == bool
    with pytest.raises(ValueError, match=r"predict takes \(slices, H, W\) raw HU, received shape "
                                         r"\(30, 20\)"):
        predictor.predict(np.zeros((30, 20), np.float32))
    with pytest.raises(ValueError, match=r"takes hu of shape \(1, 64, 64\), received "
                                         r"\(1, 32, 32\)"):
        predictor.model(np.zeros((1, 32, 32), np.float32))
    (tmp_path / "bad.tflite").write_text("not a model")
    with pytest.raises(ValueError, match=r"bad.tflite: not a readable TFLite model"):
        litert.TFLiteModel(str(tmp_path / "bad.tflite"))

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
    def double(x):
        return {"y": 2.0 * x}

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [double.get_concrete_function()], tf.Module())
    (tmp_path / "other.tflite").write_bytes(converter.convert())
    with pytest.raises(ValueError, match=r"other.tflite: not an lsnet_tf TFLite model "
                                         r"\(signatures .*expected serving_default with input "
                                         r"'hu'\)"):
        litert.TFLiteModel(str(tmp_path / "other.tflite"))
    assert litert.read_metadata(str(tmp_path / "other.tflite")) == {}


@pytest.mark.slow
def test_without_litert_the_tensorflow_interpreter_runs_it(lite_file, monkeypatch):
    hu = hu_volume((1, 64, 64), 6)
    want = litert.TFLiteModel(lite_file)(hu)
    chosen = litert.TFLiteModel(lite_file, runtime="tensorflow")
    assert chosen.runtime == "tensorflow" and isinstance(chosen.interpreter, tf.lite.Interpreter)
    np.testing.assert_allclose(chosen(hu)["probability"], want["probability"], atol=1e-5)
    with pytest.raises(ValueError, match="runtime must be one of auto, litert, tensorflow, "
                                         "received 'tflite'"):
        litert.TFLiteModel(lite_file, runtime="tflite")
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails
    model = litert.TFLiteModel(lite_file)
    assert model.runtime == "tensorflow"
    np.testing.assert_allclose(model(hu)["probability"], want["probability"], atol=1e-5)
    with pytest.raises(litert.LiteRTMissingError, match="LiteRT is not installed"):
        litert.TFLiteModel(lite_file, runtime="litert")
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(litert.LiteRTMissingError,
                       match="needs LiteRT \\(pip install ai-edge-litert\\) or TensorFlow"):
        litert.TFLiteModel(lite_file)
    with pytest.raises(litert.LiteRTMissingError,
                       match="runtime 'tensorflow' needs TensorFlow, which is not installed"):
        litert.TFLiteModel(lite_file, runtime="tensorflow")


def run_without_tensorflow(script: str) -> tuple:
    """Run `script` (``BLOCK_TENSORFLOW`` + code that prints a JSON report last) in a fresh
    interpreter from the repository; its exit code must be 0. Returns (report, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.mark.slow
def test_predict_runs_in_a_process_without_tensorflow(lite_file, tmp_path):
    hu = hu_volume((3, 50, 60), 7)
    np.save(tmp_path / "vol.npy", hu)
    script = BLOCK_TENSORFLOW + textwrap.dedent(f"""
        import json
        from lsnet_tf import predict
        from lsnet_tf.export.litert import TFLitePredictor
        from lsnet_tf.inference import predictors, readers
        from lsnet_tf.inference.volume import predict_volume

        predictor = TFLitePredictor({lite_file!r})
        volume = readers.read_input({str(tmp_path / "vol.npy")!r})
        pred = predict_volume(predictor, volume.hu, progress=None)
        volume.write_mask(pred["mask"], {str(tmp_path / "direct.nii.gz")!r})
        # the command line, with the TFLite predictor of this module
        predictors.TFLitePredictor = TFLitePredictor
        code = predict.main(["--model", {lite_file!r}, "--input", {str(tmp_path / "vol.npy")!r},
                             "--out", {str(tmp_path / "cli")!r}])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(json.dumps({{"code": code, "loaded": loaded}}))
    """)
    report, stderr = run_without_tensorflow(script)
    assert report == {"code": 0, "loaded": []}, stderr[-3000:]

    want = volume._label_map(tf_path_predict(lite_file, hu)["mask"])
    assert want.sum() > 0
    for name in ("direct.nii.gz", os.path.join("cli", "mask.nii.gz")):
        np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / name)).dataobj), want)
    with open(tmp_path / "cli" / "summary.json", encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["model_format"] == "tflite" and summary["mask_voxels"] == int(want.sum())
