"""Localization or delineation: where one two-stage model loses to another, measured without
retraining (``python -m lsnet_tf.experiments oracle``).

L-SNet and the coarse-to-fine model both find a region, then segment it. When one trails the
other, the gap is either in the first stage (the boxes) or in the second (how a found region is
segmented). For each trained pair of runs on the same (fold, seed), on the held-out fold:

- ``own``: each model as it is (its ``predict_masks``);
- ``truth``: each second stage fed the ground-truth boxes of the slice, through its own rule:
  L-SNet's S-Net on one RR RoI per box (keypoint = the box centre, distances = the box's
  half-extents, RR's margin m added as in Eq. 3); the coarse-to-fine model's fine network on one
  hard crop of the union of the boxes (``crop_mode="union"``; one crop per box with
  ``"components"``), grown by its margin, rounded outward and clipped, as at inference;
- ``swapped``: each second stage fed the other model's first-stage boxes (L-Net's boxes into the
  fine network, the coarse mask's boxes into RR and S-Net), through the same rules;
- ``boxes``: the first stages' boxes against the ground truth (the best IoU of each true box, 0
  when none was found: ``box_miou``), by target size.

Per-slice DSC, the share of targets found and box mIoU are averaged over the held-out slices
with a target, overall and per size bucket (``metrics.segmentation.size_bucket``). If a model's
second stage is as good as the other's once both get perfect boxes, the gap was localization;
if the gap stays, it is delineation.
"""
from __future__ import annotations

import collections
import json
import os

import numpy as np

from lsnet_tf.evaluation import slices as ev
from lsnet_tf.experiments.catalogue import DATASETS, TABLES, ExperimentError
from lsnet_tf.experiments.claims import CLAIMS, claims_ratio
from lsnet_tf.experiments.provenance import (_git_commit, _provenance_note, _run_times,
                                             provenance)
from lsnet_tf.experiments.tables import _dataset_note, _mean_sd_text
from lsnet_tf.experiments.units import (_seeds_of_rows, repo_path, run_folder, unit_fields,
                                        unit_json, unit_name)
from lsnet_tf.utils.files import write_json, write_text
from lsnet_tf.metrics import segmentation as seg
from lsnet_tf.metrics import statistics
from lsnet_tf.metrics.evaluation import SIZE_BUCKETS, slice_rows


CONDITIONS = ("own", "truth", "swapped")


def second_stage_on_boxes(model, images, boxes, valid):
    """The second stage of a two-stage `model` (``LSNet``, ``CoarseToFine`` or ``LNetCrop``) on
    given boxes ``(B, K, 4)`` xyxy with ``(B, K)`` bool `valid`, through the model's own RoI
    rule (see the module docstring): the pasted-back probabilities ``(B, H, W, C)``."""
    import tensorflow as tf

    from lsnet_tf.models import two_stage
    from lsnet_tf.models.lsnet import LSNet
    from lsnet_tf.ops import crops

    boxes = tf.convert_to_tensor(boxes, tf.float32)
    valid = tf.convert_to_tensor(valid, tf.bool)
    if isinstance(model, LSNet):
        centres = (boxes[..., :2] + boxes[..., 2:]) / 2
        distances = tf.concat([centres - boxes[..., :2], boxes[..., 2:] - centres], -1)

        def take(images, keypoints, dist):
            return model.rr([images, keypoints, dist])

        return two_stage.segment_rois(model.snet, images, model.image_size, valid, take,
                                      centres, distances)
    if getattr(model, "crop_mode", "components") == "union":
        boxes = crops.union_box(boxes, valid)[:, None]
        valid = tf.reduce_any(valid, axis=1, keepdims=True)
    return model._segment_rois(images, boxes, valid)


def _truth_valid(batch):
    import tensorflow as tf

    k = tf.shape(batch["boxes"])[1]
    return tf.range(k)[None, :] < tf.cast(batch["num_boxes"], tf.int32)[:, None]


def compare_pair(models: dict, batches) -> dict:
    """Per-slice rows (``metrics.evaluation.slice_rows``) of two two-stage models under each
    condition of ``CONDITIONS`` over the batches of ``data.pipeline.eval_dataset``.

    Args:
      models: ``{name: model}``, exactly two.
      batches: the held-out slices.

    Returns:
      ``{name: {condition: [row, ...]}}``; a row's ``box_ious`` are those of the boxes the
      second stage was given (the model's own first stage for ``own``, the other's for
      ``swapped``, the truth for ``truth``).
    """
    import tensorflow as tf

    if len(models) != 2:
        raise ValueError(f"compare_pair takes two models, received {len(models)}")
    names = list(models)
    predict = {n: tf.function(models[n].predict_masks) for n in names}
    on_boxes = {n: tf.function(lambda im, b, v, m=models[n]: second_stage_on_boxes(m, im, b, v))
                for n in names}
    rows = {n: {c: [] for c in CONDITIONS} for n in names}
    for batch in batches:
        images = batch["image"]
        own = {n: predict[n](images) for n in names}
        truth_valid = _truth_valid(batch)
        n_images = int(images.shape[0])
        ids = batch["patient_id"].numpy() if "patient_id" in batch else [""] * n_images
        index = batch["slice_index"].numpy() if "slice_index" in batch else np.arange(n_images)
        truth = batch["mask"].numpy()[..., 0]

        def add(name, condition, mask, boxes, valid):
            rows[name][condition] += slice_rows(ids, index, truth, np.asarray(mask)[..., 0],
                                                batch["boxes"].numpy(), batch["num_boxes"].numpy(),
                                                np.asarray(boxes), np.asarray(valid))

        for me, other in (names, names[::-1]):
            add(me, "own", own[me]["mask"], own[me]["boxes"], own[me]["valid"])
            add(me, "truth", on_boxes[me](images, batch["boxes"], truth_valid),
                batch["boxes"], truth_valid)
            add(me, "swapped", on_boxes[me](images, own[other]["boxes"], own[other]["valid"]),
                own[other]["boxes"], own[other]["valid"])
    return rows


def _mean(values):
    return float(np.mean(values)) if values else None


def summarize_rows(rows) -> dict:
    """Over the slices with a target of `rows`: ``dsc`` (mean per-slice DSC), ``found`` (share
    of slices with a predicted pixel on the target), ``box_miou`` (mean best IoU of the true
    boxes) and ``slices``, overall (``"all"``) and per size bucket, in % (None where no slice)."""
    target = [r for r in rows if r["n_true"] > 0]
    groups = {"all": target}
    for b in SIZE_BUCKETS:
        groups[b] = [r for r in target if seg.size_bucket(r["n_true"], r["pixels"]) == b]
    out = {}
    for name, group in groups.items():
        dsc = [2.0 * r["tp"] / (r["n_true"] + r["n_pred"]) for r in group]
        ious = [v for r in group for v in r["box_ious"]]
        out[name] = {"slices": len(group),
                     "dsc": None if not group else round(100 * _mean(dsc), 2),
                     "found": None if not group else round(
                         100 * _mean([float(r["tp"] > 0) for r in group]), 2),
                     "box_miou": None if not ious else round(100 * _mean(ious), 2)}
    return out


ORACLE_PAIRS = {"unet": ("lsnet_unet", "c2f_unet"), "fcn": ("lsnet_fcn", "c2f_fcn")}
ORACLE_METRICS = ("dsc", "found", "box_miou")
# A unit's analysis, written into the run folder of the pair's L-SNet: ``keep`` copies it with
# the run's record, so the analysis is rebuilt from the records once the checkpoints are gone.
ORACLE_FILE = "oracle-{family}.json"


def _has_checkpoints(run_dir: str) -> bool:
    return (os.path.isfile(os.path.join(run_dir, "eval.json"))
            and os.path.isdir(os.path.join(run_dir, "checkpoints")))


def _analysed_note(per_unit) -> str:
    """Which commits computed the units' figures (read from records, they may predate the
    command's)."""
    counts = collections.Counter(((u.get("analysed_at") or {}).get("sha") or "unknown")[:12]
                                 for u in per_unit)
    return "Units analysed at: " + ", ".join(f"{c}: {n}" for c, n in sorted(counts.items())) + "."


def unit_oracle(dirs: dict, unit, family: str, log=print) -> dict | None:
    """One unit's analysis, ``{fold, seed, pair, analysed_at, results: {model: {condition:
    summary}}}`` (``analysed_at``: the commit that computed it): read from
    its record (``ORACLE_FILE`` in the first run's folder) where there is one, else computed
    from both runs' checkpoints on the held-out fold and written there; None when neither."""
    from lsnet_tf.data import pipeline, records

    pair = list(dirs)
    record = os.path.join(dirs[pair[0]], ORACLE_FILE.format(family=family))
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as f:
            entry = json.load(f)
        want = unit_fields(unit)
        got = {k: entry.get(k) for k in want}
        if entry.get("pair") != pair or got != want:
            raise ExperimentError(f"{record} is the analysis of {entry.get('pair')} at {got}, "
                                  f"not of {pair} at {want}")
        log(f"[oracle {unit_name(unit)}] from its record {record}")
        return entry
    if not all(_has_checkpoints(d) for d in dirs.values()):
        return None
    models, cfg = {}, None
    for name, d in dirs.items():
        cfg, models[name], _ = ev.load_run(d)
    dataset_dir = pipeline.resolve_dataset(cfg.data)
    val = records.split_folds(dataset_dir, cfg.data.val_fold, "val")
    log(f"[oracle {unit_name(unit)}] {pair[0]} and {pair[1]} on {dataset_dir} folds {val}")
    found = compare_pair(models, pipeline.eval_dataset(cfg.data, dataset_dir, val))
    entry = {**unit_fields(unit), "pair": pair, "analysed_at": _git_commit(),
             "results": {n: {c: summarize_rows(found[n][c]) for c in CONDITIONS} for n in pair}}
    write_json(record, entry)
    return entry


def run_oracle(dataset: str, family: str = "unet", runs_dir: str = "runs/experiments",
               out_dir: str = "docs/results", seeds=None, folds=None, log=print,
               command: str | None = None, budget_epochs: int | None = None) -> dict:
    """Localization or delineation (see the module's doc): L-SNet and the coarse-to-fine model
    of `family` on every unit where both were trained (their checkpoints under `runs_dir`),
    each second stage fed its own, the true and the other's boxes, on the held-out slices.
    Trains nothing. Writes ``<out>/oracle-<family>-<dataset>.md`` and ``.json``: per model and
    condition, the mean ± sd over units of DSC, targets found and box mIoU, overall and by size;
    and the gap (L-SNet minus coarse-to-fine) per condition, paired by unit, with its corrected
    t-interval (``statistics.corrected_t``) and verdict."""
    if family not in ORACLE_PAIRS:
        raise ExperimentError(f"--family must be one of {', '.join(ORACLE_PAIRS)}, received "
                              f"{family!r}")
    if dataset not in DATASETS:
        raise ExperimentError(f"dataset must be one of {', '.join(DATASETS)}, received {dataset!r}")
    pair = ORACLE_PAIRS[family]
    rows = [r for r in TABLES["table1"].rows if r.config in pair]
    units = _seeds_of_rows(rows[:1], dataset, None, (), seeds, None, folds)[rows[0].config]
    suffix = f"-e{budget_epochs}" if budget_epochs else ""
    runs = os.path.join(runs_dir, dataset + suffix)
    per_unit, done, missing = [], [], []
    for unit in units:
        dirs = {name: run_folder(runs, name, unit) for name in pair}
        entry = unit_oracle(dirs, unit, family, log)
        if entry is None:
            missing += [d for d in dirs.values() if not _has_checkpoints(d)]
            continue
        done.append(unit)
        per_unit.append({**entry, "runs": {n: repo_path(d) for n, d in dirs.items()}})
    for d in missing:
        log(f"no finished run with checkpoints in {d}, and no record of the analysis: left out")
    if not per_unit:
        raise ExperimentError(f"no unit of {dataset} has both {pair[0]} and {pair[1]} trained "
                              f"with checkpoints, or the record of its analysis, under {runs}")
    ratio = claims_ratio(dataset)
    groups = ("all",) + SIZE_BUCKETS
    summary = {n: {c: {g: {m: statistics.mean_sd([u["results"][n][c][g][m] for u in per_unit])
                           for m in ORACLE_METRICS} for g in groups}
                   for c in CONDITIONS} for n in pair}
    def gap(condition, group, metric):  # first of the pair minus second, paired by unit
        values = [[u["results"][n][condition][group][metric] for u in per_unit] for n in pair]
        return statistics.corrected_t(*values, ratio, CLAIMS["level"], CLAIMS["margin"])

    gaps = {c: {g: gap(c, g, "dsc") for g in groups} for c in CONDITIONS}
    box_gap = {g: gap("own", g, "box_miou") for g in groups}
    label = {r.config: r.label for r in rows}
    doc = {"dataset": dataset, "family": family, "pair": list(pair),
           "units": [unit_json(u) for u in done],
           "summary": summary, "gaps": gaps, "box_gap": box_gap, "per_unit": per_unit,
           "provenance": provenance(command or f"run_oracle({dataset!r}, {family!r})",
                                    {n: done for n in pair},
                                    [_run_times(d) for u in per_unit
                                     for d in u["runs"].values()])}
    conds = {"own": "own boxes", "truth": "true boxes", "swapped": "the other's boxes"}
    lines = [f"### Localization or delineation: {label[pair[0]]} against {label[pair[1]]} — "
             f"{dataset}", "",
             f"{_dataset_note(dataset)}Each second stage fed its own first stage's boxes, the "
             "true boxes (its own margin rule applied) and the other model's boxes, on the "
             "held-out slices with a target; nothing retrained (`lsnet_tf.experiments.oracle`). "
             f"{_provenance_note(doc['provenance'])} {_analysed_note(per_unit)}", "",
             "| Model | Boxes | n | DSC(%) | small | medium | large | found(%) | box mIoU(%) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in pair:
        for c in CONDITIONS:
            v = summary[n][c]
            cells = [_mean_sd_text(v[g]["dsc"]) for g in groups]
            lines.append(f"| {label[n]} | {conds[c]} | {len(per_unit)} | " + " | ".join(cells)
                         + f" | {_mean_sd_text(v['all']['found'])} | "
                         f"{_mean_sd_text(v['all']['box_miou'])} |")
    lines += ["", "Mean ± sample standard deviation over the units (fold, seed); box mIoU: the "
              "best IoU of each true box among the boxes the second stage was given (100 with "
              "the true boxes).", "",
              f"#### The gap: {label[pair[0]]} minus {label[pair[1]]}, DSC (points)", "",
              "| Boxes | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]

    def gap_text(t):
        if t["low"] is None:
            return "–" if t["mean"] is None else f"{t['mean']:+.2f}"
        return f"{t['mean']:+.2f} [{t['low']:+.2f}, {t['high']:+.2f}] {t['verdict']}"

    for c in CONDITIONS:
        lines.append(f"| {conds[c]} | " + " | ".join(gap_text(gaps[c][g]) for g in groups)
                     + " |")
    lines.append("| first stage's box mIoU (own) | " + " | ".join(
        gap_text(box_gap[g]) for g in groups) + " |")
    lines += ["", "Paired by unit; 95 % t-interval with the correction of Nadeau and Bengio "
              f"(n_test/n_train = {ratio:.3g}) and the verdict of the claims (holds: L-SNet "
              "ahead; equivalent: within ±1 point). With the true boxes, a gap that closes was "
              "localization; a gap that stays is delineation."]
    base = os.path.join(out_dir, f"oracle-{family}-{dataset}{suffix}")
    write_json(base + ".json", doc)
    write_text(base + ".md", "\n".join(lines) + "\n")
    log(f"wrote {base}.md and {base}.json")
    return doc
