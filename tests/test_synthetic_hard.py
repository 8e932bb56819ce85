"""The synthetic dataset's presets: the standard set exactly as it has always been generated, and
the hard preset (a faint target of 2 px to a quarter of the slice inside a context region,
look-alike blobs outside it)."""
import hashlib

import pytest

from lsnet_tf.config import SyntheticConfig
from lsnet_tf.data import synthetic

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
