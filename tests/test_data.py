"""Synthetic dataset, targets and the tf.data pipeline: known answers and invariants."""
import numpy as np
import pytest
import tensorflow as tf

from lsnet_tf.config import load_config
from lsnet_tf.data import pipeline, records, synthetic, targets


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    cache = tmp_path_factory.mktemp("syn")
    return load_config(None, [
        "data.synthetic.num_patients=6", "data.synthetic.slices_per_patient=4",
        "data.synthetic.folds=3", "data.synthetic.image_size=64", "data.image_size=64",
        "data.synthetic.max_target_size=40", "data.batch_size=4", f"data.cache_dir={cache}"])


def test_one_box_peak_is_exactly_one_at_its_centre_cell():
    box = tf.constant([[10.0, 21.0, 30.0, 41.0]])  # centre (20, 31) -> cell (5, 7) at stride 4
    heat, _ = targets.encode_targets(box, 64, 64)
    heat = heat.numpy()[..., 0]
    assert heat[7, 5] == 1.0
    assert np.unravel_index(heat.argmax(), heat.shape) == (7, 5)
    assert (heat[np.arange(16) != 7] < 1).all()


def test_gaussian_sigma_fixed_matches_formula():
    heat, _ = targets.encode_targets(tf.constant([[0.0, 0.0, 16.0, 16.0]]), 32, 32, sigma=1.5)
    heat = heat.numpy()[..., 0]  # keypoint cell (2, 2)
    assert heat[2, 4] == pytest.approx(np.exp(-4 / (2 * 1.5 ** 2)), rel=1e-6)
    assert heat[3, 3] == pytest.approx(np.exp(-2 / (2 * 1.5 ** 2)), rel=1e-6)


def test_gaussian_radius_matches_centernet_reference():
    def ref(h, w, o=0.7):  # CenterNet's gaussian_radius, transcribed
        b1 = h + w; c1 = w * h * (1 - o) / (1 + o)
        r1 = (b1 + np.sqrt(b1 ** 2 - 4 * c1)) / 2
        b2 = 2 * (h + w); c2 = (1 - o) * w * h
        r2 = (b2 + np.sqrt(b2 ** 2 - 16 * c2)) / 2
        a3 = 4 * o; b3 = -2 * o * (h + w); c3 = (o - 1) * w * h
        r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
        return min(r1, r2, r3)
    for h, w in [(2, 3), (10, 4), (30.5, 22.25)]:
        assert targets.gaussian_radius(h, w).numpy() == pytest.approx(ref(h, w), rel=1e-5)


def test_ltrb_targets_rebuild_the_box_at_positives():
    boxes = tf.constant([[8.0, 8.0, 40.0, 30.0], [44.0, 40.0, 60.0, 62.0]])
    heat, ltrb = targets.encode_targets(boxes, 64, 64)
    heat, ltrb = heat.numpy()[..., 0], ltrb.numpy()
    ii, jj = np.nonzero(heat > 0.5)
    assert len(ii) >= 2
    for i, j in zip(ii, jj):
        q = np.array([(j + 0.5) * 4, (i + 0.5) * 4])
        rebuilt = np.concatenate([q - ltrb[i, j, :2], q + ltrb[i, j, 2:]])
        assert any(np.allclose(rebuilt, b, atol=1e-4) for b in boxes.numpy())


def test_no_box_gives_zero_targets():
    heat, ltrb = targets.encode_targets(tf.zeros([0, 4]), 32, 32)
    assert heat.shape == (8, 8, 1) and ltrb.shape == (8, 8, 4)
    assert not heat.numpy().any() and not ltrb.numpy().any()


def test_window_maps_hu_to_unit_interval():
    out = pipeline.window(tf.constant([-1000.0, -160.0, 40.0, 240.0, 3000.0]), 40.0, 400.0).numpy()
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1], atol=1e-7)


def test_synthetic_is_deterministic_and_spans_scales():
    cfg = load_config().data.synthetic
    a = synthetic.generate_patient(cfg, 3)
    b = synthetic.generate_patient(cfg, 3)
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a, b))
    sides = []
    for p in range(10):
        for hu, mask in synthetic.generate_patient(cfg, p):
            bx = records.boxes_from_mask(mask)
            sides += list(np.maximum(bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]))
            assert hu.dtype == np.int16 and -1024 <= hu.min() and hu.max() <= 3071
    sides = np.array(sides)
    assert sides.min() <= 8 and sides.max() >= 40  # a few pixels to a large part of the image


def test_synthetic_folds_are_patient_level(small_cfg):
    d = pipeline.resolve_dataset(small_cfg.data)
    info = records.read_info(d)
    seen = [p for k in range(3) for p in info["patients"][str(k)]]
    assert len(seen) == len(set(seen)) == 6
    assert sum(info["num_slices"].values()) == 24


def test_pipeline_batches_are_consistent(small_cfg):
    train, val, _, n_train, n_val = pipeline.datasets_for(small_cfg)
    assert n_train + n_val == 24
    b = next(iter(train))
    assert b["image"].shape == (4, 64, 64, 1) and b["heatmap"].shape == (4, 16, 16, 1)
    assert b["ltrb"].shape == (4, 16, 16, 4) and b["boxes"].shape == (4, 8, 4)
    img = b["image"].numpy()
    assert img.min() >= 0 and img.max() <= 1
    # Augmented masks stay inside their (augmented) boxes, and each box holds target pixels.
    for i in range(4):
        m = b["mask"][i, ..., 0].numpy() > 0
        bx = b["boxes"][i, : int(b["num_boxes"][i])].numpy()
        inside = np.zeros_like(m)
        for x1, y1, x2, y2 in bx:
            inside[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = True
            assert m[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))].any()
        assert not (m & ~inside).any()
        assert (b["heatmap"][i].numpy().max() == 1.0) == (len(bx) > 0)
    # Validation sees every slice of its fold once, in a fixed order.
    n = sum(int(x["image"].shape[0]) for x in val)
    assert n == n_val
    first = [next(iter(val))["image"].numpy() for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])


def test_deterministic_option_repeats_augmentation(small_cfg):
    import dataclasses
    cfg = dataclasses.replace(small_cfg.data, deterministic=True)
    d = pipeline.resolve_dataset(cfg)
    a = next(iter(pipeline.make_dataset(cfg, d, [1, 2], training=True, seed=3)))
    b = next(iter(pipeline.make_dataset(cfg, d, [1, 2], training=True, seed=3)))
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())


def test_missing_dataset_is_a_clear_error(tmp_path):
    cfg = load_config(None, [f"data.dataset={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        pipeline.resolve_dataset(cfg.data)
