"""The paper's tables and the datasets they run on: ``TABLES`` (``Table``, ``Row``, ``Claim``),
``DATASET_INFO`` (``Dataset``), the evidence sets' ``EVIDENCE_SEEDS`` and ``EVIDENCE_FOLDS``.

TABLE is ``table1`` (main comparison), ``table2`` (ablation), ``table3`` (detection vs
segmentation as the first stage), ``table4`` (the decay factor γ) or ``margin`` (not the
paper's: L-SNet (U-Net) with the paper's 15 px margin scaled to the slice against 15 input
pixels). Every row is a config file ``configs/<dataset>/<row>.yaml`` (``configs/pancreas`` holds
the paper's settings, ``configs/synthetic`` the same rows sized for a 2-core CPU); the dataset
``synthetic-hard`` is the synthetic set's hard preset, its rows in ``configs/synthetic/hard``
(the U-Net family and the scaled margin: ``--rows unet,attention_unet,c2f_unet,lsnet_unet`` for
Table 1). Rows shared by several tables (e.g. ``lsnet_unet``) are trained once per seed.

DATASET (``DATASET_INFO``): ``synthetic`` and ``synthetic-hard`` are the tuning sets (the
settings of ``configs/synthetic`` were chosen by watching their validation fold; a row runs on
that one fold); ``synthetic-evidence`` and ``synthetic-hard-evidence`` are the evidence sets, the
same generator settings with generator seeds drawn after every setting was frozen
(``EVIDENCE_SEEDS``), cross-validated by patient in 4 folds; ``pancreas`` is Pancreas-CT
prepared with ``--folds 4``. On a cross-validated dataset every (row, fold, seed) is one run
(a ``Unit``: trained on the other folds, scored on the held-out one, in
``<row>/fold<f>/seed<k>/``); ``--folds`` runs some folds (default: all).
"""
from __future__ import annotations

import dataclasses
import os


class ExperimentError(RuntimeError):
    """An experiment cannot run as asked (unknown table or row, mismatched run folder)."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of a table: the config ``<row>.yaml``, its label and the paper's numbers (%)."""

    config: str
    label: str
    paper: dict
    cells: tuple = ()  # fixed cells before the numbers (Table 2's check marks)


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim of the paper: row `better` scores above row `than` on `metric` (a key of
    ``CLAIM_METRICS``), tested on the paired difference ``better - than`` over seeds."""

    better: str
    than: str
    metric: str


@dataclasses.dataclass(frozen=True)
class Table:
    """A table: fixed head columns, then one column per metric key of ``METRICS``; `claims`
    are the paper's claims that the table tests (``Claim``)."""

    name: str
    title: str
    head: tuple
    columns: tuple
    rows: tuple
    claims: tuple = ()

    @property
    def splits(self) -> tuple:
        return ("val", "train") if "miou_train" in self.columns else ("val",)


def _pct(value):
    return None if value is None else round(100.0 * value, 2)


def _first_params(result):
    """Trainable parameters (M) of the model's first network (the first stage)."""
    params = result["complexity"]["params"]
    first = next(k for k in params if k != "total")
    return round(params[first] / 1e6, 2)


# Metric key -> (column title, how to read it from {split: evaluation result}).
METRICS = {
    "dsc": ("DSC(%)", lambda r: _pct(r["val"]["dsc"]["mean"])),
    "precision": ("Precision(%)", lambda r: _pct(r["val"]["precision"]["mean"])),
    "recall": ("Recall(%)", lambda r: _pct(r["val"]["recall"]["mean"])),
    "miou": ("mIoU(%)", lambda r: _pct(r["val"]["box_miou"])),
    "miou_train": ("mIoU in training(%)", lambda r: _pct(r["train"]["box_miou"])),
    "miou_val": ("mIoU in validation(%)", lambda r: _pct(r["val"]["box_miou"])),
    "first_params": ("Params(M)", lambda r: _first_params(r["val"])),
    "case_dsc": ("DSC per case(%)", lambda r: _pct(r["val"]["per_case"]["mean"])),
}


def _bucket_pct(result, bucket):
    return _pct(result["val"]["dsc_by_size"][bucket]["dsc"])


# Metric key of a claim -> (its name, how to read it from {split: evaluation result}), in %.
CLAIM_METRICS = {
    "dsc": ("DSC", METRICS["dsc"][1]),
    "small": ("DSC, small targets", lambda r: _bucket_pct(r, "small")),
    "miou": ("box mIoU", METRICS["miou"][1]),
}


def _claims(better: str, than, metrics) -> tuple:
    """``Claim(better, t, m)`` for each row `t` of `than`, each metric `m` of `metrics`."""
    return tuple(Claim(better, t, m) for t in than for m in metrics)


TICK = "✓"
TABLES = {
    "table1": Table(
        "table1", "Table 1: comparison with one-stage and coarse-to-fine models",
        ("Method",), ("dsc", "precision", "recall", "case_dsc"), (
            Row("unet", "U-Net", {"dsc": 86.56, "precision": 89.60, "recall": 90.29}),
            Row("attention_unet", "Attention U-Net",
                {"dsc": 86.88, "precision": 89.60, "recall": 90.29}),
            Row("c2f_unet", "Coarse-to-fine U-Net",
                {"dsc": 87.41, "precision": 90.05, "recall": 91.36}),
            Row("lsnet_unet", "L-SNet (U-Net)", {"dsc": 88.20, "precision": 92.50, "recall": 90.45}),
            Row("fcn", "FCN", {"dsc": 84.28, "precision": 88.68, "recall": 86.85}),
            Row("c2f_fcn", "Coarse-to-fine FCN", {"dsc": 86.16, "precision": 91.78, "recall": 87.84}),
            Row("lsnet_fcn", "L-SNet (FCN)", {"dsc": 87.20, "precision": 92.60, "recall": 89.07}),
        ),
        # L-SNet above every other model of its family, overall and on small targets.
        _claims("lsnet_unet", ("unet", "attention_unet", "c2f_unet"), ("dsc", "small"))
        + _claims("lsnet_fcn", ("fcn", "c2f_fcn"), ("dsc", "small"))),
    "table2": Table(
        "table2", "Table 2: ablation (U-Net family)",
        ("S-Net", "Loss", "L-Net", "RR"), ("dsc", "case_dsc"), (
            Row("snet_bce", "S-Net, BCE", {"dsc": 84.69}, (TICK, "", "", "")),
            Row("unet", "S-Net, our loss", {"dsc": 86.51}, (TICK, TICK, "", "")),
            Row("lnet_crop", "+ L-Net, crop", {"dsc": 87.86}, (TICK, TICK, TICK, "")),
            Row("lsnet_unet", "+ RR (L-SNet)", {"dsc": 88.20}, (TICK, TICK, TICK, TICK)),
        ),
        # Each step of the ablation improves on the row before it.
        (Claim("unet", "snet_bce", "dsc"), Claim("lnet_crop", "unet", "dsc"),
         Claim("lsnet_unet", "lnet_crop", "dsc"))),
    "table3": Table(
        "table3", "Table 3: detection vs segmentation at the first stage (crop to S-Net)",
        ("First stage",), ("miou", "dsc", "first_params", "case_dsc"), (
            Row("c2f_unet", "U-Net", {"miou": 83.83, "dsc": 87.41, "first_params": 14.33}),
            Row("lnet_crop", "L-Net", {"miou": 86.58, "dsc": 87.86, "first_params": 14.50}),
        ),
        # L-Net is the better first stage: better boxes and a better final mask.
        _claims("lnet_crop", ("c2f_unet",), ("miou", "dsc"))),
    "table4": Table(
        "table4", "Table 4: the decay factor γ of S-Net's gradient into L-Net (U-Net family)",
        ("γ",), ("miou_train", "miou_val", "dsc", "case_dsc"), (
            Row("lsnet_unet_gamma0", "0", {"miou_train": 92.03, "miou_val": 86.58, "dsc": 87.86}),
            Row("lsnet_unet_gamma0p01", "0.01",
                {"miou_train": 88.09, "miou_val": 84.88, "dsc": 88.05}),
            Row("lsnet_unet", "0.1", {"miou_train": 88.24, "miou_val": 84.98, "dsc": 88.20}),
            Row("lsnet_unet_gamma1", "1", {"miou_train": 86.84, "miou_val": 84.68, "dsc": 87.21}),
        ),
        # γ = 0.1 (the paper's choice) above each other γ.
        _claims("lsnet_unet", ("lsnet_unet_gamma0", "lsnet_unet_gamma0p01", "lsnet_unet_gamma1"),
                ("dsc",))),
    # Not a table of the paper: its margin m = 15 px is a size on a 512 x 512 slice, which a
    # 128 x 128 input keeps as 15 input pixels unless model.margin_reference scales it.
    "margin": Table(
        "margin", "The paper's margin scaled to the slice: m = 15 px of a 512 px slice "
        "against 15 input pixels (L-SNet (U-Net))",
        ("Margin m",), ("dsc", "precision", "recall", "case_dsc", "miou"), (
            Row("lsnet_unet", "15 px of the input", {}),
            Row("lsnet_unet_scaled", "15 px at 512 (scaled)", {}),
        ),
        # Our hypothesis, not the paper's claim: the scaled margin, RR's larger zoom on small
        # targets, does better, overall, on small targets and in its boxes.
        _claims("lsnet_unet_scaled", ("lsnet_unet",), ("dsc", "small", "miou"))),
}


# Rows drawn in the DSC-against-size plot when a table has them.
SIZE_PLOT_ROWS = ("unet", "c2f_unet", "lnet_crop", "lsnet_unet")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset of the tables.

    Attributes:
      configs: the folder of ``configs/`` that holds its row configs.
      role: ``"tuning"`` (settings may be chosen by watching it), ``"evidence"`` (drawn after
        every setting was frozen; nothing is chosen by watching it) or ``"paper"`` (the paper's
        data).
      overrides: settings every row gets on it (``key=value``), on top of the row's config.
      folds: k of the k-fold cross-validation by patient that its tables run (each (row, fold,
        seed) one run, ``data.val_fold`` the held-out fold); None: the config's validation fold
        alone.
    """

    configs: str
    role: str
    overrides: tuple = ()
    folds: int | None = None


# The evidence sets: the tuning sets' generator settings with generator seeds drawn at random
# (secrets.randbits(31)) after every setting of configs/synthetic was frozen, split into 4 folds
# by patient (10 of the 40 patients each) as the paper cross-validates Pancreas-CT.
EVIDENCE_SEEDS = {"synthetic-evidence": 83267049, "synthetic-hard-evidence": 252499704}
EVIDENCE_FOLDS = 4
DATASET_INFO = {
    "synthetic": Dataset("synthetic", "tuning"),
    "synthetic-hard": Dataset(os.path.join("synthetic", "hard"), "tuning"),
    "synthetic-evidence": Dataset(
        "synthetic", "evidence", (f"data.synthetic.seed={EVIDENCE_SEEDS['synthetic-evidence']}",
                                  f"data.synthetic.folds={EVIDENCE_FOLDS}"), EVIDENCE_FOLDS),
    "synthetic-hard-evidence": Dataset(
        os.path.join("synthetic", "hard"), "evidence",
        (f"data.synthetic.seed={EVIDENCE_SEEDS['synthetic-hard-evidence']}",
         f"data.synthetic.folds={EVIDENCE_FOLDS}"), EVIDENCE_FOLDS),
    "pancreas": Dataset("pancreas", "paper", (), 4),
}
# The folder of configs/ that holds each dataset's row configs.
DATASET_CONFIGS = {name: d.configs for name, d in DATASET_INFO.items()}
DATASETS = tuple(DATASET_INFO)
