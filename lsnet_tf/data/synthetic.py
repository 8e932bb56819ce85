"""The embedded default dataset: deterministic CT-like 2D slices with a target of widely varying size.

Each synthetic patient has a body outline (fat ring around soft tissue) in air, a few organs
(a liver-like region, two kidney-like regions, a vertebra in bone HU), Gaussian HU noise, and on
most slices a target structure: an irregular blob (a union of overlapping ellipses) whose HU is
``contrast_hu`` above the soft tissue around it. The target's diameter is drawn log-uniformly
between ``min_target_size`` and ``max_target_size`` pixels, so a model sees targets from a few
pixels across to a large part of the image: the scale-variation problem L-SNet addresses. Some
slices hold no target, some two. That is the ``standard`` preset (``data.synthetic.preset``).

In the ``hard`` preset finding the target is the problem, as with the pancreas: the target is
faint (``hard_contrast_hu``, +25 HU by default, against 20 HU of noise), 2 px to a quarter of the
slice across (``hard_min_target_size`` to ``hard_max_target_size``), and always lies in a context
region, the soft tissue between the kidneys and in front of the vertebra (``context_region``);
``hard_lookalikes_min`` to ``hard_lookalikes_max`` (1-4) unlabelled look-alike blobs of the same
HU and size distribution lie in the soft tissue outside it (``generate_hard_slice``), so only the context tells a target from a look-alike.
``python -m lsnet_tf.data.synthetic --figure OUT.png`` draws a few of its slices.

The generator writes the same TFRecord format as ``python -m lsnet_tf.prepare`` (one shard per
patient, patients split into folds), into a cache folder keyed by the generator settings (the
preset's, ``SyntheticConfig.settings``), so ``python -m lsnet_tf.train`` generates it once and
then reuses it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile

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


def _anatomy(rng, s, body, yy, xx):
    """The slice without target or noise: (hu float32 (S, S), inner soft-tissue ellipse (S, S),
    vertebra (S, S))."""
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
    vertebra = _ellipse(yy, xx, cy + 0.62 * ry, cx + j[4] * 0.2, 0.14 * ry, 0.14 * ry)
    hu[vertebra] = BONE
    return hu, inner, vertebra


def generate_slice(rng: np.random.Generator, cfg: SyntheticConfig, body: dict, n_targets: int):
    """One slice of the standard preset: returns (hu int16 (S, S), mask uint8 (S, S))."""
    s = cfg.image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    cy, cx, ry, rx = body["cy"], body["cx"], body["ry"], body["rx"]
    hu, inner, _ = _anatomy(rng, s, body, yy, xx)

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


def context_region(body: dict, yy, xx):
    """The hard preset's context region (S, S) bool: the soft tissue between the kidneys and in
    front of the vertebra, an ellipse placed relative to the body (as the organs are)."""
    cy, cx, ry, rx = body["cy"], body["cx"], body["ry"], body["rx"]
    return _ellipse(yy, xx, cy + 0.06 * ry, cx, 0.40 * ry, 0.36 * rx)


def _compact_blob(rng, yy, xx, cy, cx, diameter):
    """An irregular blob within `diameter` / 2 of its centre: an ellipse whose major axis is the
    diameter (minor axis 0.6-1 of it) and 0-2 lobes inside the same circle."""
    r = diameter / 2.0
    mask = _ellipse(yy, xx, cy, cx, r * rng.uniform(0.6, 1.0), r, rng.uniform(0, np.pi))
    for _ in range(rng.integers(0, 3)):
        rho, phi = rng.uniform(0, 0.4) * r, rng.uniform(0, 2 * np.pi)
        ay, ax = rng.uniform(0.3, 0.6, 2) * r
        mask |= _ellipse(yy, xx, cy + rho * np.sin(phi), cx + rho * np.cos(phi), ay, ax,
                         rng.uniform(0, np.pi))
    return mask


def _place_blob(rng, free, diameter, yy, xx):
    """A compact blob of `diameter` whose pixels all lie in `free` (S, S) bool, centred on a pixel
    drawn uniformly among those farther than the radius from every pixel outside `free`; None
    when there is no such pixel."""
    from scipy import ndimage

    ok = np.flatnonzero(ndimage.distance_transform_edt(free) > diameter / 2.0)
    if not ok.size:
        return None
    iy, ix = divmod(int(ok[rng.integers(ok.size)]), free.shape[1])
    reach = int(np.ceil(diameter / 2.0)) + 1  # the blob lies in this window around its centre
    y0, y1 = max(iy - reach, 0), min(iy + reach + 1, free.shape[0])
    x0, x1 = max(ix - reach, 0), min(ix + reach + 1, free.shape[1])
    blob = np.zeros(free.shape, bool)
    blob[y0:y1, x0:x1] = _compact_blob(rng, yy[y0:y1, x0:x1], xx[y0:y1, x0:x1], iy + 0.5, ix + 0.5,
                                       diameter) & free[y0:y1, x0:x1]
    return blob


def _grow(mask, pixels: int):
    """`mask` grown by `pixels` in the 8-neighbourhood (so a blob outside it never touches it)."""
    from scipy import ndimage

    return ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=pixels)


# Look-alikes keep this many pixels away from the context region.
LOOKALIKE_GAP = 3


def generate_hard_slice(rng: np.random.Generator, cfg: SyntheticConfig, body: dict, n_targets: int):
    """One slice of the hard preset, with what the tests and the figure need besides the data.

    The anatomy is the standard preset's; the context region is cleared to soft tissue (its
    organs' edges give way to it), and every blob (target or look-alike) lies on soft tissue at
    ``TISSUE + hard_contrast_hu``, its diameter log-uniform in [hard_min_target_size,
    hard_max_target_size], no two touching. The targets lie inside the context region (a second
    target that finds no room is left out); the look-alikes, hard_lookalikes_min to
    hard_lookalikes_max of them (one that finds no room is left out), lie outside it, at least
    ``LOOKALIKE_GAP`` pixels away.

    Returns a dict: ``hu`` int16 (S, S), ``mask`` uint8 (S, S) (the targets), ``region`` and
    ``lookalikes`` bool (S, S), ``background`` float32 (S, S) (HU before blobs and noise),
    ``target_sizes`` and ``lookalike_sizes`` (the diameters drawn for the blobs placed).
    """
    s = cfg.image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    hu, inner, vertebra = _anatomy(rng, s, body, yy, xx)
    region = context_region(body, yy, xx) & inner & ~vertebra
    hu[region] = TISSUE
    background = hu.copy()
    lo, hi = np.log(cfg.hard_min_target_size), np.log(cfg.hard_max_target_size)

    def blobs(count, free):
        placed, sizes = np.zeros((s, s), bool), []
        for _ in range(count):
            d = float(np.exp(rng.uniform(lo, hi)))
            blob = _place_blob(rng, free, d, yy, xx)
            if blob is None:
                continue
            placed |= blob
            sizes.append(d)
            free = free & ~_grow(blob, 1)
        return placed, sizes

    mask, target_sizes = blobs(n_targets, region.copy())
    n_lookalikes = int(rng.integers(cfg.hard_lookalikes_min, cfg.hard_lookalikes_max + 1))
    outside = inner & (hu == TISSUE) & ~_grow(region, LOOKALIKE_GAP)
    lookalikes, lookalike_sizes = blobs(n_lookalikes, outside)
    hu[mask | lookalikes] = TISSUE + cfg.hard_contrast_hu
    hu += rng.normal(0, cfg.noise_hu, hu.shape).astype(np.float32)
    return {"hu": np.clip(np.round(hu), -1024, 3071).astype(np.int16),
            "mask": mask.astype(np.uint8), "region": region, "lookalikes": lookalikes,
            "background": background, "target_sizes": target_sizes,
            "lookalike_sizes": lookalike_sizes}


def _patient_slices(cfg: SyntheticConfig, index: int, make_slice):
    rng = np.random.default_rng([cfg.seed, index])
    s = cfg.image_size
    body = {"cy": s / 2 + rng.uniform(-0.04, 0.04) * s, "cx": s / 2 + rng.uniform(-0.04, 0.04) * s,
            "ry": s * rng.uniform(0.34, 0.42), "rx": s * rng.uniform(0.42, 0.48)}
    out = []
    for _ in range(cfg.slices_per_patient):
        u = rng.uniform()
        n = 0 if u < cfg.empty_fraction else (2 if u < cfg.empty_fraction + cfg.two_target_fraction else 1)
        out.append(make_slice(rng, cfg, body, n))
    return out


def generate_hard_patient(cfg: SyntheticConfig, index: int) -> list[dict]:
    """All slices of patient `index` of the hard preset as ``generate_hard_slice`` dicts."""
    return _patient_slices(cfg, index, generate_hard_slice)


def generate_patient(cfg: SyntheticConfig, index: int):
    """All slices of synthetic patient `index` as (hu, mask) pairs, deterministic in (seed, index)."""
    if cfg.preset == "hard":
        return [(d["hu"], d["mask"]) for d in generate_hard_patient(cfg, index)]
    return _patient_slices(cfg, index, generate_slice)


def fold_of(cfg: SyntheticConfig, index: int) -> int:
    order = np.random.default_rng(cfg.seed).permutation(cfg.num_patients)
    return int(np.argsort(order)[index] % cfg.folds)


def config_key(cfg: SyntheticConfig) -> str:
    text = json.dumps(cfg.settings(), sort_keys=True)
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
        "synthetic": cfg.settings(),
    })
    return out_dir


def ensure_dataset(cfg: SyntheticConfig, cache_dir: str, progress: bool = True) -> str:
    """The cached synthetic dataset for `cfg`, generated once, on first use.

    The folder name carries a hash of the settings. Processes that start on an empty cache at
    once (the workers of a training cluster on one machine, two runs) take turns on a lock file
    beside it (``.<folder>.lock``, ``fcntl.flock``): the first generates, the others wait and
    find it done. The dataset is written into a folder of its own and renamed into place whole,
    so an interrupted generation is redone rather than read half-finished. (The lock holds
    between processes of one machine and on file systems with ``flock``; a cache shared over
    NFS may not have it.)
    """
    out = os.path.join(cache_dir, config_key(cfg))
    info = os.path.join(out, records.INFO_FILE)
    if os.path.isfile(info):
        return out
    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.join(cache_dir, f".{os.path.basename(out)}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if os.path.isfile(info):  # generated by another process while this one waited
            return out
        if progress:
            print(f"generating the synthetic dataset into {out}")
        work = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=cache_dir)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(work, 0o777 & ~umask)  # a folder's usual mode, not mkdtemp's owner-only 0700
        try:
            write_dataset(cfg, work, progress=progress)
            if os.path.isdir(out):
                shutil.rmtree(out)  # an interrupted generation's folder
            os.rename(work, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # gone already when it was renamed
    return out


def _figure_slices(cfg: SyntheticConfig, count: int) -> list[dict]:
    """`count` slices of the hard preset for the figure, from the first patients: the smallest
    and the largest target, others in between, and an empty slice."""
    pool = [d for p in range(min(cfg.num_patients, 4)) for d in generate_hard_patient(cfg, p)]
    with_target = sorted((d for d in pool if d["target_sizes"]),
                         key=lambda d: max(d["target_sizes"]))
    empty = [d for d in pool if not d["mask"].any()]
    n = count - (1 if empty else 0)
    picks = [with_target[round(i * (len(with_target) - 1) / max(n - 1, 1))] for i in range(n)]
    return picks + empty[:1]


def draw_figure(cfg: SyntheticConfig, path: str, count: int = 6, window=(40.0, 400.0)) -> str:
    """A PNG of `count` hard-preset slices: each shown as the model sees it (HU window
    `window` = (centre, width)) and again with the label outlined (green), the look-alikes
    (orange) and the context region (dashed cyan); blobs under 6 px are ringed as well."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle
    from scipy import ndimage

    slices = _figure_slices(cfg, count)
    centre, width = window
    fig, axes = plt.subplots(2, len(slices), figsize=(1.75 * len(slices), 4.0), squeeze=False,
                             dpi=100)
    for c, d in enumerate(slices):
        img = np.clip((d["hu"].astype(np.float32) - centre) / width + 0.5, 0, 1)
        sizes = ", ".join(f"{t:.0f}" for t in d["target_sizes"])
        axes[0, c].set_title(f"target {sizes} px" if sizes else "no target", fontsize=8)
        for r in range(2):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
        ax = axes[1, c]
        ax.contour(d["region"], levels=[0.5], colors="cyan", linewidths=0.8, linestyles="dashed")
        for key, colour in (("lookalikes", "orange"), ("mask", "lime")):
            if not d[key].any():
                continue
            ax.contour(d[key], levels=[0.5], colors=colour, linewidths=1.0)
            # A ring around blobs of a few pixels, whose outline is too small to see.
            labels, n = ndimage.label(d[key], np.ones((3, 3), bool))
            for k, (rows, cols) in enumerate(ndimage.find_objects(labels)):
                if max(rows.stop - rows.start, cols.stop - cols.start) < 6:
                    ax.add_patch(Circle(((cols.start + cols.stop) / 2 - 0.5,
                                         (rows.start + rows.stop) / 2 - 0.5), 5, fill=False,
                                        ec=colour, lw=1.0))
    handles = [Line2D([], [], color="lime", label="label (target)"),
               Line2D([], [], color="orange", label="look-alikes (label 0)"),
               Line2D([], [], color="cyan", ls="--", label="context region")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"hard synthetic preset: +{cfg.hard_contrast_hu:g} HU over soft tissue, noise "
                 f"{cfg.noise_hu:g} HU, window {centre:g}/{width:g}; "
                 "bottom: the same slices, outlined",
                 fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95), pad=0.3)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    plt.close(fig)
    from PIL import Image  # a palette of grays and the outline colours keeps the PNG small

    colours = [(g, g, g) for g in np.linspace(0, 255, 64).round().astype(int)]
    colours += [(0, 255, 0), (255, 165, 0), (0, 255, 255)]
    palette = Image.new("P", (1, 1))
    palette.putpalette([v for c in colours for v in c] + [0] * 3 * (256 - len(colours)))
    image = Image.fromarray(rgb).quantize(palette=palette, dither=Image.Dither.NONE)
    image.save(path, optimize=True)
    return path


def main(argv=None) -> int:
    import argparse

    from lsnet_tf.config import ConfigError, load_config

    parser = argparse.ArgumentParser(
        prog="python -m lsnet_tf.data.synthetic",
        description="Draw slices of the synthetic dataset's hard preset with their labels, "
                    "look-alikes and context region outlined.")
    parser.add_argument("--figure", required=True, metavar="OUT.png", help="the PNG to write")
    parser.add_argument("--config", default=None,
                        help="a config whose data.synthetic settings to use (default: defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override, as for python -m lsnet_tf.train")
    parser.add_argument("--slices", type=int, default=6, help="number of slices (default 6)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, [*args.set, "data.synthetic.preset=hard"]).data.synthetic
    except ConfigError as e:
        parser.error(str(e))
    if args.slices < 1:
        parser.error("--slices must be >= 1")
    print(draw_figure(cfg, args.figure, count=args.slices))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
