"""The synthetic dataset's presets: the standard set exactly as it has always been generated, and
the hard preset (a faint target of 2 px to a quarter of the slice inside a context region,
look-alike blobs outside it)."""
import hashlib
import os

import numpy as np
import pytest
from scipy import ndimage

from lsnet_tf.config import ConfigError, SyntheticConfig, load_config
from lsnet_tf.data import records, synthetic

# The standard set, hashed from the generator as it was before the hard preset existed: every
# slice (HU and mask bytes) of two patients per config, the cache key (the cache folder's name)
# and the fold assignment. A change to any of them regenerates or alters users' data.
TINY_STANDARD = dict(num_patients=4, slices_per_patient=3, image_size=64, max_target_size=24.0,
                     seed=3)
STANDARD_HASHES = {
    "default": ({}, "8c4145c69204", {0: "d883b51e62943e92", 7: "345f0457b8dc9496"}),
    "tiny": (TINY_STANDARD, "b8ea64b0ab11", {0: "47991c150a26b4d5", 2: "58bc67f186258099"}),
}


def patient_hash(cfg, index):
    digest = hashlib.sha256()
    for hu, mask in synthetic.generate_patient(cfg, index):
        digest.update(hu.tobytes())
        digest.update(mask.tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(STANDARD_HASHES))
def test_standard_preset_is_unchanged(name):
    settings, key, hashes = STANDARD_HASHES[name]
    cfg = SyntheticConfig(**settings)
    assert synthetic.config_key(cfg) == key
    for index, expected in hashes.items():
        assert patient_hash(cfg, index) == expected, (name, index)
    if name == "default":
        assert synthetic.fold_of(cfg, 5) == 4
    else:
        assert [synthetic.fold_of(cfg, i) for i in range(4)] == [3, 2, 1, 0]


def test_standard_preset_ignores_the_hard_settings():
    cfg = SyntheticConfig(hard_min_target_size=3.0, hard_max_target_size=20.0,
                          hard_contrast_hu=40.0, hard_lookalikes_min=0, hard_lookalikes_max=9)
    _, key, hashes = STANDARD_HASHES["default"]
    assert synthetic.config_key(cfg) == key
    assert patient_hash(cfg, 0) == hashes[0]
    assert "preset" not in cfg.settings() and "contrast_hu" in cfg.settings()


# ------------------------------------------------------------------------------- hard preset

EIGHT = np.ones((3, 3), bool)
# Tiny: 64 px slices, so targets of 2 to 16 px (a quarter of the slice).
TINY_HARD = dict(preset="hard", num_patients=4, slices_per_patient=8, image_size=64,
                 hard_max_target_size=16.0, folds=2)
SEEDS = (0, 1, 2)


def hard(**settings):
    cfg = SyntheticConfig(**{**TINY_HARD, **settings})
    cfg.validate()
    return cfg


def hard_slices(cfg, patients=None):
    return [d for p in range(patients or cfg.num_patients)
            for d in synthetic.generate_hard_patient(cfg, p)]


def components(mask):
    labels, n = ndimage.label(mask, EIGHT)
    return [labels == k + 1 for k in range(n)], ndimage.find_objects(labels)


def extent(sl):
    rows, cols = sl
    return max(rows.stop - rows.start, cols.stop - cols.start)


def test_hard_generation_is_deterministic():
    cfg = hard()
    a, b = synthetic.generate_patient(cfg, 1), synthetic.generate_patient(cfg, 1)
    assert len(a) == cfg.slices_per_patient
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a, b))
    parts = synthetic.generate_hard_patient(cfg, 1)
    assert all((d["hu"] == x[0]).all() and (d["mask"] == x[1]).all() for d, x in zip(parts, a))
    assert a[0][0].dtype == np.int16 and a[0][1].dtype == np.uint8
    other = synthetic.generate_patient(hard(seed=1), 1)
    assert any((x[0] != y[0]).any() for x, y in zip(a, other))


@pytest.mark.parametrize("seed", SEEDS)
def test_labels_lie_in_the_context_region_and_lookalikes_outside_it(seed):
    outside_lookalikes = 0
    for d in hard_slices(hard(seed=seed)):
        region, mask, looks = d["region"], d["mask"].astype(bool), d["lookalikes"]
        # Every labelled component lies inside the context region, one per target placed.
        parts, _ = components(mask)
        assert len(parts) == len(d["target_sizes"])
        assert all((part & ~region).sum() == 0 for part in parts)
        # Look-alikes are never labelled, and lie outside the region with a gap.
        assert not (mask & looks).any()
        assert not (looks & ndimage.binary_dilation(region, EIGHT, synthetic.LOOKALIKE_GAP)).any()
        assert len(components(looks)[0]) == len(d["lookalike_sizes"])
        outside_lookalikes += int(looks.sum())
        # The look-alikes are as bright as targets (they are in the image, not only listed).
        if looks.any():
            assert d["hu"][looks].mean() > d["hu"][d["region"] & ~mask].mean() + 10
        # The region is soft tissue in front of (above, in the image) the vertebra.
        bone_rows = np.nonzero((d["background"] == synthetic.BONE).any(axis=1))[0]
        assert np.nonzero(region.any(axis=1))[0].max() < bone_rows.min()
        assert (d["background"][region] == synthetic.TISSUE).all()
    assert outside_lookalikes > 0


def test_lookalikes_on_most_slices():
    cfg = hard()
    slices = hard_slices(cfg)
    counts = np.array([len(d["lookalike_sizes"]) for d in slices])
    assert counts.max() <= cfg.hard_lookalikes_max
    assert (counts > 0).mean() >= 0.9
    assert len(set(counts.tolist())) > 1  # a count drawn per slice
    # At the default 128 px too, where most of them are placed (the default range is 1-4).
    full = hard_slices(SyntheticConfig(preset="hard", slices_per_patient=8), patients=2)
    counts = np.array([len(d["lookalike_sizes"]) for d in full])
    assert (counts > 0).mean() >= 0.9 and counts.mean() >= 2.0
    none = hard_slices(hard(hard_lookalikes_min=0, hard_lookalikes_max=0), patients=1)
    assert not any(d["lookalikes"].any() for d in none)


@pytest.mark.parametrize("settings", [{}, {"image_size": 128, "hard_max_target_size": 32.0}])
def test_target_sizes_within_the_configured_range(settings):
    cfg = hard(**settings)
    lo, hi = cfg.hard_min_target_size, cfg.hard_max_target_size
    drawn, extents, lookalike_drawn = [], [], []
    for d in hard_slices(cfg):
        drawn += d["target_sizes"]
        lookalike_drawn += d["lookalike_sizes"]
        _, boxes = components(d["mask"])
        extents += [extent(sl) for sl in boxes]
        for sl in boxes:
            assert 1 <= extent(sl) <= hi + 1
        if len(d["target_sizes"]) == 1:  # the one component has the diameter drawn
            r = d["target_sizes"][0] / 2
            assert 2 * np.floor(0.6 * r) + 1 <= extent(boxes[0]) <= 2 * r + 1
    drawn, lookalike_drawn = np.array(drawn), np.array(lookalike_drawn)
    assert drawn.min() >= lo and drawn.max() <= hi
    # Spread over the range, log-uniformly: a few pixels to near the maximum, centred in log.
    assert min(extents) <= 3 and max(extents) >= 0.6 * hi
    assert abs(np.log(drawn).mean() - (np.log(lo) + np.log(hi)) / 2) < 0.35
    # Look-alikes: the same distribution.
    assert lookalike_drawn.min() >= lo and lookalike_drawn.max() <= hi
    assert abs(np.log(lookalike_drawn).mean() - (np.log(lo) + np.log(hi)) / 2) < 0.35


def contrast(d, blobs):
    """Mean HU of `blobs` minus that of the soft tissue 2-3 px around them (no blob, no organ)."""
    every = d["mask"].astype(bool) | d["lookalikes"]
    ring = (ndimage.binary_dilation(blobs, EIGHT, 3) & ~ndimage.binary_dilation(blobs, EIGHT, 1)
            & ~every & (d["background"] == synthetic.TISSUE))
    hu = d["hu"].astype(np.float64)
    return hu[blobs].sum(), blobs.sum(), hu[ring].sum(), ring.sum()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("contrast_hu", [25.0, 50.0])
def test_contrast_as_configured(seed, contrast_hu):
    cfg = hard(seed=seed, hard_contrast_hu=contrast_hu, image_size=128, hard_max_target_size=32.0)
    for key in ("mask", "lookalikes"):
        totals = np.zeros(4)
        for d in hard_slices(cfg, patients=2):
            totals += contrast(d, d[key].astype(bool))
        assert totals[1] > 500 and totals[3] > 500
        measured = totals[0] / totals[1] - totals[2] / totals[3]
        assert abs(measured - contrast_hu) < 3.0, (key, measured)
    # The noise is the configured one: soft tissue inside the region, away from blobs.
    d = hard_slices(cfg, patients=1)[0]
    calm = d["region"] & ~ndimage.binary_dilation(d["mask"].astype(bool), EIGHT, 2)
    assert abs(d["hu"][calm].std() - cfg.noise_hu) < 3.0


def test_empty_slices_at_about_the_configured_fraction():
    for fraction in (0.1, 0.3):
        cfg = hard(num_patients=10, slices_per_patient=16, empty_fraction=fraction)
        slices = hard_slices(cfg)
        empty = np.array([not d["mask"].any() for d in slices])
        assert abs(empty.mean() - fraction) < 0.07, (fraction, empty.mean())
        # Look-alikes are drawn on empty slices too.
        assert np.mean([d["lookalikes"].any() for d, e in zip(slices, empty) if e]) >= 0.8


def test_cache_key_holds_the_preset_and_its_settings(tmp_path):
    keys = {synthetic.config_key(c) for c in (
        SyntheticConfig(), SyntheticConfig(preset="hard"),
        SyntheticConfig(preset="hard", hard_contrast_hu=30.0),
        SyntheticConfig(preset="hard", hard_min_target_size=3.0),
        SyntheticConfig(preset="hard", hard_max_target_size=30.0),
        SyntheticConfig(preset="hard", hard_lookalikes_max=5),
        SyntheticConfig(preset="hard", seed=1))}
    assert len(keys) == 7
    tiny = dict(num_patients=2, slices_per_patient=2, image_size=64, max_target_size=24.0, folds=2)
    standard = synthetic.ensure_dataset(SyntheticConfig(**tiny), str(tmp_path), progress=False)
    difficult = synthetic.ensure_dataset(
        SyntheticConfig(**tiny, preset="hard", hard_max_target_size=16.0), str(tmp_path),
        progress=False)
    assert standard != difficult and sorted(visible(tmp_path)) == sorted(
        os.path.basename(p) for p in (standard, difficult))
    info = records.read_info(difficult)
    assert info["synthetic"]["preset"] == "hard" and info["synthetic"]["hard_contrast_hu"] == 25.0
    assert "preset" not in records.read_info(standard)["synthetic"]
    # Cached: a second call reuses the folder without writing.
    stamp = os.path.getmtime(os.path.join(difficult, records.INFO_FILE))
    again = SyntheticConfig(**tiny, preset="hard", hard_max_target_size=16.0)
    assert synthetic.ensure_dataset(again, str(tmp_path), progress=False) == difficult
    assert os.path.getmtime(os.path.join(difficult, records.INFO_FILE)) == stamp


def visible(folder):
    """The names in `folder` but the generation's lock files (``.<key>.lock``)."""
    return [n for n in os.listdir(folder) if not (n.startswith(".") and n.endswith(".lock"))]


GENERATE = """
import sys
from lsnet_tf.config import SyntheticConfig
from lsnet_tf.data import synthetic
cfg = SyntheticConfig(num_patients=3, slices_per_patient=2, image_size=64, max_target_size=24.0,
                      folds=2)
print("ready", flush=True)
sys.stdin.readline()  # every process waits here, then all call ensure_dataset at once
print("dataset", synthetic.ensure_dataset(cfg, sys.argv[1]), flush=True)
"""


def test_processes_that_start_at_once_generate_the_dataset_once(tmp_path):
    """Three processes call ``ensure_dataset`` on one empty cache at the same moment (each
    released from a pipe once all have imported): one generates, the others wait on the lock
    and read its folder; every slice once, no work folder left behind."""
    import subprocess
    import sys

    import tensorflow as tf

    procs = [subprocess.Popen([sys.executable, "-c", GENERATE, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(3)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), outputs
    folders = {line.split(" ", 1)[1] for o in outputs for line in o.splitlines()
               if line.startswith("dataset ")}
    assert len(folders) == 1, outputs
    out = folders.pop()
    assert sum(o.count("generating the synthetic dataset") for o in outputs) == 1, outputs
    assert visible(tmp_path) == [os.path.basename(out)]
    shards = records.list_shards(out, range(2))
    assert len(shards) == 3
    assert [sum(1 for _ in tf.data.TFRecordDataset(s)) for s in shards] == [2, 2, 2]
    assert sum(records.read_info(out)["num_slices"].values()) == 6


def test_an_interrupted_generation_is_redone(tmp_path):
    """A folder without dataset.json (a generation killed half-way) is replaced, not read."""
    tiny = SyntheticConfig(num_patients=2, slices_per_patient=2, image_size=64,
                           max_target_size=24.0, folds=2)
    half = tmp_path / synthetic.config_key(tiny)
    (half / "fold-0").mkdir(parents=True)
    (half / "fold-0" / "synthetic-0000.tfrecord").write_bytes(b"cut short")
    out = synthetic.ensure_dataset(tiny, str(tmp_path), progress=False)
    assert out == str(half) and visible(tmp_path) == [half.name]
    assert sum(records.read_info(out)["num_slices"].values()) == 4
    assert all(os.path.getsize(p) > 100 for p in records.list_shards(out, range(2)))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o777 & ~umask  # as os.makedirs would make it


@pytest.mark.parametrize("override, message", [
    ("data.synthetic.preset=medium",
     "data.synthetic.preset must be standard or hard (received 'medium')"),
    ("data.synthetic.hard_max_target_size=40",
     "data.synthetic needs 0 < hard_min_target_size <= hard_max_target_size <= image_size / 4 "
     "(the largest target that fits the context region) (received (2.0, 40.0, 128))"),
    ("data.synthetic.hard_min_target_size=0",
     "data.synthetic needs 0 < hard_min_target_size <= hard_max_target_size <= image_size / 4"),
    ("data.synthetic.hard_lookalikes_min=5",
     "data.synthetic needs 0 <= hard_lookalikes_min <= hard_lookalikes_max (received (5, 4))"),
])
def test_bad_hard_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.synthetic.preset=hard", override])
    assert message in str(err.value)


def test_figure(tmp_path):
    out = tmp_path / "hard.png"
    assert synthetic.main(["--figure", str(out), "--slices", "3", "--set",
                           "data.synthetic.image_size=64", "--set",
                           "data.synthetic.hard_max_target_size=16"]) == 0
    from PIL import Image

    with Image.open(out) as img:
        assert img.size[0] > img.size[1] > 100
        colours = {c for _, c in img.convert("RGB").getcolors(1 << 16)}
    # Outlines of labels (lime), look-alikes (orange) and the region (cyan) are drawn.
    assert {(0, 255, 0), (255, 165, 0), (0, 255, 255)} <= colours


def test_the_committed_figure_is_small():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                        "synthetic-hard.png")
    assert os.path.isfile(path) and os.path.getsize(path) < 300_000


def flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("row", ["base", "unet", "attention_unet", "c2f_unet", "lsnet_unet",
                                 "lsnet_unet_scaled"])
def test_hard_rows_are_the_synthetic_rows_on_the_hard_preset(row):
    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                           "synthetic")
    on_hard = load_config(os.path.join(configs, "hard", f"{row}.yaml"))
    plain = load_config(os.path.join(configs, f"{row}.yaml"))
    a, b = flat(on_hard.to_dict()), flat(plain.to_dict())
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {"data.synthetic.preset", "train.output_dir", "export.name",
                      "model.mask_prior", "model.decoder_width"}
    assert plain.model.mask_prior == 0.0 and on_hard.model.mask_prior == 0.01
    assert plain.model.decoder_width == 0 and on_hard.model.decoder_width == 32
    assert on_hard.data.synthetic.preset == "hard" and on_hard.data.synthetic == SyntheticConfig(
        preset="hard")  # the preset's defaults, spelled out in hard/base.yaml
    assert on_hard.train.output_dir == plain.train.output_dir.replace("runs/synthetic/",
                                                                      "runs/synthetic/hard/")
    assert on_hard.export.name == f"hard_{plain.export.name}"
