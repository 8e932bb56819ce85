"""Write synthetic patients as NIfTI volumes with their labels, for ``predict`` and ``evaluate``.

    python docs/results/ensemble/make_cases.py --config RUN/config.yaml --seed S --patients N \
        --out DIR

Patient ``p`` of generator seed ``S`` is ``lsnet_tf.data.synthetic.generate_patient`` of the
config's ``data.synthetic`` settings with ``seed = S`` (a patient depends on the settings, the
seed and its index only, not on ``num_patients`` or ``folds``). Each patient is written as
``DIR/images/patient_<p>.nii.gz`` (int16 HU, as the generator gives them) and
``DIR/labels/patient_<p>.nii.gz`` (uint8 0/1), both in the canonical (slice, row, col) layout with
the synthetic set's spacing (0.8 x 0.8 mm, 2.5 mm slices), so that ``predict`` reads back
exactly the generated slices (checked here for every case) and ``evaluate --predictions`` pairs
each mask with its label on one grid. (Names end in 3 digits: ``predict`` reads a trailing
``_0000`` as nnU-Net's channel suffix and drops it from the case name.)
"""
from __future__ import annotations

import argparse
import os

import numpy as np

SPACING = (0.8, 0.8, 2.5)  # row, col, slice mm: what write_dataset records for synthetic slices


def canonical_affine(spacing=SPACING) -> np.ndarray:
    """Voxel -> LPS affine of a canonical (slice, row, col) array at the origin."""
    dr, dc, ds = spacing
    affine = np.eye(4)
    affine[:3, :3] = [[0.0, 0.0, dc], [0.0, dr, 0.0], [ds, 0.0, 0.0]]
    return affine


def write_cases(config: str, seed: int, patients: int, out: str) -> list[str]:
    from lsnet_tf.config import load_config
    from lsnet_tf.data import nifti, synthetic
    from lsnet_tf.inference.readers import read_input

    cfg = load_config(config, [f"data.synthetic.seed={seed}"]).data.synthetic
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "labels"), exist_ok=True)
    affine = canonical_affine()
    names = []
    for p in range(patients):
        slices = synthetic.generate_patient(cfg, p)
        hu = np.stack([s[0] for s in slices]).astype(np.int16)
        mask = np.stack([s[1] for s in slices]).astype(np.uint8)
        name = f"patient_{p:03d}"
        image_path = os.path.join(out, "images", f"{name}.nii.gz")
        nifti.write_volume(image_path, hu, affine)
        nifti.write_volume(os.path.join(out, "labels", f"{name}.nii.gz"), mask, affine)
        back = read_input(image_path)
        if back.hu.shape != hu.shape or not np.array_equal(back.hu, hu.astype(np.float32)):
            raise SystemExit(f"{image_path}: predict would not read back the generated slices")
        names.append(name)
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config whose data.synthetic to use")
    parser.add_argument("--seed", type=int, required=True, help="generator seed")
    parser.add_argument("--patients", type=int, required=True, help="patients 0 .. N-1")
    parser.add_argument("--out", required=True, help="folder for images/ and labels/")
    args = parser.parse_args(argv)
    names = write_cases(args.config, args.seed, args.patients, args.out)
    print(f"{len(names)} cases written to {args.out} (generator seed {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
