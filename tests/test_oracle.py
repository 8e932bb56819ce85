"""The localization-or-delineation analysis (``lsnet_tf.experiments.oracle``): second stages on
given boxes, the conditions of a pair, and their summaries."""
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_batch, tiny_cfg

from lsnet_tf.experiments import oracle
from lsnet_tf.models import two_stage
from lsnet_tf.models.build import build_model


@pytest.fixture(scope="module")
def pair():
    return {"lsnet_unet": build_model(tiny_cfg("model.architecture=lsnet")),
            "c2f_unet": build_model(tiny_cfg("model.architecture=coarse_to_fine", "model.crop_mode=union"))}


def test_rr_roi_depends_on_the_box_edges_only(pair):
    """L-SNet's second stage on a box equals RR at any keypoint inside it with the distances to
    its edges (Eq. 3: x1 = k_x - l - m, x2 = k_x + r + m)."""
    model = pair["lsnet_unet"]
    images = make_batch(2)["image"]
    boxes = tf.constant([[[10.0, 12.0, 30.0, 40.0], [0, 0, 0, 0]],
                         [[20.0, 8.0, 50.0, 20.0], [5.0, 5.0, 15.0, 15.0]]])
    valid = tf.constant([[True, False], [True, True]])
    got = oracle.second_stage_on_boxes(model, images, boxes, valid)
    # Keypoints a third of the way into each box, distances to its edges.
    keypoints = boxes[..., :2] + (boxes[..., 2:] - boxes[..., :2]) / 3
    dist = tf.concat([keypoints - boxes[..., :2], boxes[..., 2:] - keypoints], -1)
    want = two_stage.segment_rois(model.snet, images, model.image_size, valid,
                                  lambda im, k, d: model.rr([im, k, d]), keypoints, dist)
    assert got.shape == (2, 64, 64, 1)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_union_crop_rule_takes_one_crop_around_every_box(pair):
    model = pair["c2f_unet"]
    images = make_batch(2)["image"]
    boxes = tf.constant([[[10.0, 12.0, 20.0, 20.0], [30.0, 30.0, 40.0, 44.0]],
                         [[20.0, 8.0, 50.0, 20.0], [0, 0, 0, 0]]])
    valid = tf.constant([[True, True], [True, False]])
    got = oracle.second_stage_on_boxes(model, images, boxes, valid)
    union = tf.constant([[[10.0, 12.0, 40.0, 44.0]], [[20.0, 8.0, 50.0, 20.0]]])
    want = model._segment_rois(images, union, tf.ones([2, 1], tf.bool))
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)
    # No box: an empty mask.
    empty = oracle.second_stage_on_boxes(model, images, boxes, tf.zeros([2, 2], tf.bool))
    assert float(tf.reduce_max(empty)) == 0.0


def test_compare_pair_gives_each_condition_its_boxes(pair):
    batch = make_batch(4, with_target=(True, True, False))
    rows = oracle.compare_pair(pair, [batch])
    assert set(rows) == set(pair)
    for name in pair:
        assert set(rows[name]) == set(oracle.CONDITIONS)
        assert all(len(rows[name][c]) == 4 for c in oracle.CONDITIONS)
        truth = [r for r in rows[name]["truth"] if r["n_true"]]
        assert len(truth) == 3 and all(r["box_ious"] == [pytest.approx(1.0)] for r in truth)
        # Own: the model's predict_masks, counted as the evaluation counts it.
        pred = pair[name].predict_masks(batch["image"])
        n_pred = (pred["mask"].numpy()[..., 0] > 0.5).sum(axis=(1, 2))
        assert [r["n_pred"] for r in rows[name]["own"]] == n_pred.tolist()
    # Swapped: each model's rows carry the other's own boxes.
    assert [r["box_ious"] for r in rows["lsnet_unet"]["swapped"]] == \
        [r["box_ious"] for r in rows["c2f_unet"]["own"]]


def test_summarize_rows_by_size():
    pixels = 100 * 100  # small < 100 px, medium < 500 px, large from 500 px
    rows = [
        {"tp": 40, "n_true": 50, "n_pred": 50, "pixels": pixels, "box_ious": [0.5]},   # small
        {"tp": 0, "n_true": 80, "n_pred": 0, "pixels": pixels, "box_ious": [0.0]},     # small
        {"tp": 300, "n_true": 400, "n_pred": 200, "pixels": pixels, "box_ious": [0.9]},  # medium
        {"tp": 0, "n_true": 0, "n_pred": 10, "pixels": pixels, "box_ious": []},       # no target
    ]
    got = oracle.summarize_rows(rows)
    # DSC: 2*40/100 = 0.8, 0, 2*300/600 = 1.0.
    assert got["all"] == {"slices": 3, "dsc": pytest.approx(60.0), "found": pytest.approx(66.67),
                          "box_miou": pytest.approx(46.67)}
    assert got["small"] == {"slices": 2, "dsc": 40.0, "found": 50.0, "box_miou": 25.0}
    assert got["medium"]["dsc"] == 100.0
    assert got["large"] == {"slices": 0, "dsc": None, "found": None, "box_miou": None}


def test_compare_pair_takes_two_models(pair):
    with pytest.raises(ValueError, match="two models, received 1"):
        oracle.compare_pair({"lsnet_unet": pair["lsnet_unet"]}, [])


def test_unit_oracle_reads_its_record_and_refuses_another_units(tmp_path):
    """A unit's kept analysis is read without checkpoints; one of another unit or pair is an
    error naming it; with neither a record nor checkpoints the unit is left out (None)."""
    import json

    from lsnet_tf.experiments.catalogue import ExperimentError
    from lsnet_tf.experiments.units import Unit

    dirs = {"lsnet_unet": str(tmp_path / "lsnet_unet"), "c2f_unet": str(tmp_path / "c2f_unet")}
    assert oracle.unit_oracle(dirs, Unit(2, 1), "unet", log=lambda *a: None) is None
    entry = {"fold": 2, "seed": 1, "pair": ["lsnet_unet", "c2f_unet"], "results": {"x": 1}}
    (tmp_path / "lsnet_unet").mkdir()
    record = tmp_path / "lsnet_unet" / "oracle-unet.json"
    record.write_text(json.dumps(entry))
    assert oracle.unit_oracle(dirs, Unit(2, 1), "unet", log=lambda *a: None) == entry
    with pytest.raises(ExperimentError, match=r"oracle-unet.json is the analysis of "
                                              r"\['lsnet_unet', 'c2f_unet'\] at \{'fold': 2, "
                                              r"'seed': 1\}, not of .* at \{'fold': 3"):
        oracle.unit_oracle(dirs, Unit(3, 1), "unet", log=lambda *a: None)
