"""The DSC-against-size plot of a table (``size_plot``; per-seed curves ``size_curve``, over seeds
``seed_curve``).

When the table has any of the U-Net-family rows of ``SIZE_PLOT_ROWS``, a plot of per-slice DSC
against the target's area goes beside it (``...-dsc-vs-size.png``): per bin, the mean over seeds
of each seed's mean, with bars of ± 1 standard deviation across seeds.
"""
from __future__ import annotations

import os

import numpy as np

from lsnet_tf.experiments.catalogue import ExperimentError
from lsnet_tf.experiments.units import _count
from lsnet_tf.utils.files import atomic_write
from lsnet_tf.metrics.segmentation import scores_from_counts


def size_curve(slices, edges) -> dict:
    """Per-slice DSC of the slices with a target, binned by the target's share of the slice.

    Args:
      slices: an evaluation's ``slices`` (``tp``, ``n_true``, ``n_pred``, ``pixels``).
      edges: increasing bin edges of the target's share of the slice, in %; a slice falls in
        bin ``i`` when ``edges[i] <= share < edges[i + 1]`` (the last bin includes its top).

    Returns:
      ``{"n": (bins,), "mean": (bins,), "sem": (bins,)}``: slices, mean DSC and its standard
      error per bin (NaN where a bin is empty; ``sem`` 0 with one slice).
    """
    edges = np.asarray(edges, np.float64)
    share, dsc = [], []
    for r in slices:
        if r["n_true"] > 0:
            share.append(100.0 * r["n_true"] / r["pixels"])
            dsc.append(scores_from_counts(r["tp"], r["n_true"], r["n_pred"])["dsc"])
    share, dsc = np.asarray(share), np.asarray(dsc)
    index = np.clip(np.searchsorted(edges, share, side="right") - 1, 0, len(edges) - 2)
    inside = (share >= edges[0]) & (share <= edges[-1])
    bins = len(edges) - 1
    n, mean, sem = np.zeros(bins, int), np.full(bins, np.nan), np.full(bins, np.nan)
    for i in range(bins):
        v = dsc[inside & (index == i)]
        n[i] = v.size
        if v.size:
            mean[i] = v.mean()
            sem[i] = v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0
    return {"n": n, "mean": mean, "sem": sem}


def seed_curve(slices_per_seed, edges) -> dict:
    """``size_curve`` over seeds: per bin, the mean over seeds of each seed's bin mean and the
    sample standard deviation of those means across seeds.

    Args:
      slices_per_seed: one evaluation's ``slices`` per seed (the same validation slices).
      edges: as ``size_curve``'s.

    Returns:
      ``{"n": (bins,), "mean": (bins,), "sd": (bins,), "seeds": (bins,)}``: the first seed's
      slices per bin, the mean and standard deviation across seeds (NaN where no seed has a
      slice in the bin; ``sd`` NaN with one seed) and the seeds that have a slice in the bin.
    """
    curves = [size_curve(slices, edges) for slices in slices_per_seed]
    means = np.stack([c["mean"] for c in curves])  # (seeds, bins)
    present = ~np.isnan(means)
    seeds = present.sum(axis=0)
    total = np.where(present, means, 0.0).sum(axis=0)
    mean = np.where(seeds > 0, total / np.maximum(seeds, 1), np.nan)
    sd = np.full(mean.shape, np.nan)
    for i in np.flatnonzero(seeds > 1):
        sd[i] = means[present[:, i], i].std(ddof=1)
    return {"n": curves[0]["n"], "mean": mean, "sd": sd, "seeds": seeds}


def size_plot(path: str, curves: dict, title: str, bins: int = 8) -> None:
    """Plot per-slice DSC against the target's share of the slice, with error bars over seeds.

    Each point is the mean over seeds of the seed's mean per-slice DSC in the bin; its bar is
    ± 1 sample standard deviation of those means across seeds (none for a row run at one seed).

    Args:
      path: the PNG to write.
      curves: ``{label: [slices, ...]}``: an evaluation's ``slices`` per seed, per method.
      title: the figure's title.
      bins: log-spaced bins between the smallest and the largest target of all curves.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = [100.0 * r["n_true"] / r["pixels"] for runs in curves.values() for s in runs
              for r in s if r["n_true"] > 0]
    if not shares:
        raise ExperimentError("no slice with a target to plot")
    edges = np.geomspace(min(shares), max(shares) * (1 + 1e-9), bins + 1)
    centres = np.sqrt(edges[:-1] * edges[1:])
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    step = np.log(edges[1] / edges[0])
    for k, (label, runs) in enumerate(curves.items()):
        c = seed_curve(runs, edges)
        offset = np.exp(step * 0.08 * (k - (len(curves) - 1) / 2))  # keep error bars apart
        ax.errorbar(centres * offset, 100 * c["mean"], yerr=100 * np.nan_to_num(c["sd"]),
                    marker="o", capsize=3,
                    label=f"{label} ({_count(len(runs), 'seed', 'seeds')})")
        if k == 0:
            hist.bar(centres, c["n"], width=np.diff(edges) * 0.9, color="0.6")
    for a in (ax, hist):
        for edge in (1.0, 5.0):  # the small / medium / large buckets
            a.axvline(edge, color="0.5", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_ylabel("per-slice DSC (%): mean over seeds,\nbars ± 1 s.d. across seeds")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    hist.set_ylabel("slices")
    hist.set_xlabel("target area (% of the slice); dashed: small | medium | large")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
