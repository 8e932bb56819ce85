"""The embedded default dataset: deterministic CT-like 2D slices with a target of widely varying size.

Each synthetic patient has a body outline (fat ring around soft tissue) in air, a few organs
(a liver-like region, two kidney-like regions, a vertebra in bone HU), Gaussian HU noise, and on
most slices a target structure: an irregular blob (a union of overlapping ellipses) whose HU is
``contrast_hu`` above the soft tissue around it. The target's diameter is drawn log-uniformly
between ``min_target_size`` and ``max_target_size`` pixels, so a model sees targets from a few
pixels across to a large part of the image: the scale-variation problem L-SNet addresses. Some
slices hold no target, some two.

The generator writes the same TFRecord format as ``python -m lsnet_tf.prepare`` (one shard per
patient, patients split into folds), into a cache folder keyed by the generator settings, so
``python -m lsnet_tf.train`` generates it once and then reuses it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from lsnet_tf.config import SyntheticConfig
from lsnet_tf.data import records

AIR, FAT, TISSUE, LIVER, KIDNEY, BONE = -1000.0, -100.0, 40.0, 60.0, 30.0, 500.0


def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / max(rx, 1e-3)) ** 2 + (v / max(ry, 1e-3)) ** 2 <= 1.0


def _blob(rng, yy, xx, cy, cx, diameter):
    """An irregular target: 1-3 overlapping ellipses of roughly the given diameter."""
    r = diameter / 2.0
    mask = _ellipse(yy, xx, cy, cx, r * rng.uniform(0.6, 1.0), r, rng.uniform(0, np.pi))
    for _ in range(rng.integers(0, 3)):
        dy, dx = rng.uniform(-0.5, 0.5, 2) * r
        mask |= _ellipse(yy, xx, cy + dy, cx + dx, r * rng.uniform(0.3, 0.6), r * rng.uniform(0.4, 0.8),
                         rng.uniform(0, np.pi))
    if not mask.any():  # sub-pixel targets still cover their centre pixel
        mask[int(np.clip(cy, 0, yy.shape[0] - 1)), int(np.clip(cx, 0, xx.shape[1] - 1))] = True
    return mask


def generate_slice(rng: np.random.Generator, cfg: SyntheticConfig, body: dict, n_targets: int):
    """One slice: returns (hu int16 (S, S), mask uint8 (S, S))."""
    s = cfg.image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    cy, cx, ry, rx = body["cy"], body["cx"], body["ry"], body["rx"]
    hu = np.full((s, s), AIR, np.float32)
    outer = _ellipse(yy, xx, cy, cx, ry, rx)
    inner = _ellipse(yy, xx, cy, cx, ry * 0.88, rx * 0.9)
    hu[outer] = FAT
    hu[inner] = TISSUE
    # Organs move a little from slice to slice.
    j = rng.normal(0, 0.02 * s, 8)
    hu[_ellipse(yy, xx, cy - 0.1 * ry + j[0], cx - 0.45 * rx + j[1], 0.45 * ry, 0.35 * rx) & inner] = LIVER
    for side in (-1, 1):
        hu[_ellipse(yy, xx, cy + 0.35 * ry + j[2], cx + side * 0.45 * rx + j[3], 0.18 * ry, 0.12 * rx) & inner] = KIDNEY
    hu[_ellipse(yy, xx, cy + 0.62 * ry, cx + j[4] * 0.2, 0.14 * ry, 0.14 * ry)] = BONE

    mask = np.zeros((s, s), bool)
    lo, hi = np.log(cfg.min_target_size), np.log(cfg.max_target_size)
    for _ in range(n_targets):
        d = float(np.exp(rng.uniform(lo, hi)))
        # Centre inside the soft-tissue region, far enough from the body edge for its size.
        for _attempt in range(20):
            ty = cy + rng.uniform(-1, 1) * max(ry * 0.8 - d / 2, 1.0)
            tx = cx + rng.uniform(-1, 1) * max(rx * 0.8 - d / 2, 1.0)
            if inner[int(np.clip(ty, 0, s - 1)), int(np.clip(tx, 0, s - 1))]:
                break
        blob = _blob(rng, yy, xx, ty, tx, d)
        mask |= blob
    hu[mask] = TISSUE + cfg.contrast_hu
    hu += rng.normal(0, cfg.noise_hu, hu.shape).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), mask.astype(np.uint8)


def generate_patient(cfg: SyntheticConfig, index: int):
    """All slices of synthetic patient `index` as (hu, mask) pairs, deterministic in (seed, index)."""
    rng = np.random.default_rng([cfg.seed, index])
    s = cfg.image_size
    body = {"cy": s / 2 + rng.uniform(-0.04, 0.04) * s, "cx": s / 2 + rng.uniform(-0.04, 0.04) * s,
            "ry": s * rng.uniform(0.34, 0.42), "rx": s * rng.uniform(0.42, 0.48)}
    out = []
    for _ in range(cfg.slices_per_patient):
        u = rng.uniform()
        n = 0 if u < cfg.empty_fraction else (2 if u < cfg.empty_fraction + cfg.two_target_fraction else 1)
        out.append(generate_slice(rng, cfg, body, n))
    return out


def fold_of(cfg: SyntheticConfig, index: int) -> int:
    order = np.random.default_rng(cfg.seed).permutation(cfg.num_patients)
    return int(np.argsort(order)[index] % cfg.folds)


def config_key(cfg: SyntheticConfig) -> str:
    text = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    return hashlib.sha256(f"v{records.FORMAT_VERSION}:{text}".encode()).hexdigest()[:12]


def write_dataset(cfg: SyntheticConfig, out_dir: str, progress: bool = False) -> str:
    """Write the synthetic dataset to `out_dir` (one shard per patient); return `out_dir`."""
    cfg.validate()
    patients = {k: [] for k in range(cfg.folds)}
    counts = {k: 0 for k in range(cfg.folds)}
    for p in range(cfg.num_patients):
        pid, fold = f"synthetic-{p:04d}", fold_of(cfg, p)
        with records.ShardWriter(records.shard_path(out_dir, fold, pid)) as w:
            for z, (hu, mask) in enumerate(generate_patient(cfg, p)):
                w.write(records.SliceRecord(hu, mask, pid, z, spacing=(0.8, 0.8, 2.5), fold=fold))
        patients[fold].append(pid)
        counts[fold] += cfg.slices_per_patient
        if progress:
            print(f"\rsynthetic dataset: patient {p + 1}/{cfg.num_patients}", end="", flush=True)
    if progress:
        print()
    records.write_info(out_dir, {
        "source": "synthetic",
        "folds": cfg.folds,
        "patients": {str(k): v for k, v in patients.items()},
        "num_slices": {str(k): v for k, v in counts.items()},
        "synthetic": dataclasses.asdict(cfg),
    })
    return out_dir


def ensure_dataset(cfg: SyntheticConfig, cache_dir: str, progress: bool = True) -> str:
    """The cached synthetic dataset for `cfg`, generated on first use.

    The folder name carries a hash of the settings, and `dataset.json` is written last, so an
    interrupted generation is redone rather than read half-finished.
    """
    out = os.path.join(cache_dir, config_key(cfg))
    if os.path.isfile(os.path.join(out, records.INFO_FILE)):
        return out
    if progress:
        print(f"generating the synthetic dataset into {out}")
    return write_dataset(cfg, out, progress=progress)
