"""The work of ``python -m lsnet_tf.predict``: one case (`predict_case`, `run`) or many
(`run_many`: `lsnet_tf.inference.many` finds them, `lsnet_tf.inference.batch` runs them).

`predict_case` reads the input (`lsnet_tf.inference.readers`), runs the loaded predictor over
its slices (`lsnet_tf.inference.volume`) and writes the outputs of
`lsnet_tf.inference.outputs`; `run` first checks the input, ``--out`` and the models, then
loads them (`lsnet_tf.inference.predictors`).

Refused before the model loads (`PredictError`): a missing input, an ``--out`` that is an
existing file, or that is (or lies inside) the input folder (`check_out_dir`), and models that
cannot form an ensemble (`lsnet_tf.inference.predictors.resolve_models`). A file that cannot be
written is named with what it is.

Many cases: the model loads once; each case is written to ``--out/<case>/`` (``--overwrite``
redoes cases already complete, which are skipped otherwise), with ``--out/cases.csv`` and
``cases.json`` summing them up; a broken case is reported and the others go on (the command's
exit status is 1 when a case failed). ``--runner NAME`` with ``--beam-options "..."`` runs them
as an Apache Beam pipeline.

Inputs and ``--out`` may be ``gs://`` URLs: a case in a bucket is read from a temporary local
copy of that case alone (`lsnet_tf.utils.staging`; the summary, the log and errors name the
URL), and outputs for a URL are written locally and published to it
(`lsnet_tf.inference.buckets`).
"""
from __future__ import annotations

import functools
import os
import sys
import time
from typing import Callable

import numpy as np

from lsnet_tf.utils import files, staging
from lsnet_tf.utils.files import describe_outputs, fingerprint, write_json, writing
from lsnet_tf.inference import batch, buckets, dicom_seg, ensemble, many, predictors, review
from lsnet_tf.inference.outputs import DISAGREEMENT_FILE, SEG_FILE, save_overlay, summarize
from lsnet_tf.inference.readers import DEFAULT_WINDOW, PredictError, not_dicom_note, read_input
from lsnet_tf.inference.volume import predict_volume, progress_bar

__all__ = ["predict_case", "check_out_dir", "run", "run_many"]


def predict_case(predictor, input_path: str, out_dir: str, spacing=None, overlays: bool = True,
                 progress: Callable | None = progress_bar, log=print, t0: float | None = None,
                 shown_as: str | None = None, dicom_seg_file: bool = True,
                 series_uid=None, disagreement: bool = False,
                 review_below: float = ensemble.REVIEW_BELOW, thumbnails: bool = False) -> dict:
    """Predict `input_path` with a loaded `predictor` into `out_dir`; returns the summary dict.

    With an `EnsemblePredictor` (more than one view: `lsnet_tf.inference.ensemble`) the summary
    also holds ``members`` (path, format, sha256 of each), ``tta``, and the agreement fields of
    `lsnet_tf.inference.ensemble.Agreement.summary` (``review`` against `review_below`);
    `disagreement` writes ``disagreement.nii.gz`` (float32, the input's geometry) beside the
    mask.

    `thumbnails`: also write the thumbnails of the review page (`lsnet_tf.inference.review`:
    ``thumbnails/``, listed in the summary as ``review_slices``), as many cases do.

    `dicom_seg_file`: for a DICOM series, also write ``mask.seg.dcm``
    (`lsnet_tf.inference.dicom_seg`), a DICOM Segmentation of the mask referencing the CT slices
    (none when the mask is empty).

    `t0`: the time the summary's ``seconds`` count from (default: now). `shown_as`: the folder
    named in the log line (default `out_dir`; the batch writes into a temporary folder).
    `series_uid`: the series to read from a DICOM folder that holds several.

    The summary's ``outputs`` maps each file written (relative to `out_dir`) to its ``bytes``
    and ``sha256``: a later batch run skips the case only while they are unchanged. A file that
    cannot be written raises `lsnet_tf.utils.files.WriteError` naming it and what it is.
    """
    t0 = time.time() if t0 is None else t0
    with staging.local_copies(input_path) as (staged, (local_input,)):
        return _predict_case(predictor, input_path, local_input, staged, out_dir, t0,
                             spacing=spacing, overlays=overlays, progress=progress, log=log,
                             shown_as=shown_as, dicom_seg_file=dicom_seg_file,
                             series_uid=series_uid, disagreement=disagreement,
                             review_below=review_below, thumbnails=thumbnails)


def _predict_case(predictor, input_path, local_input, staged, out_dir, t0, *, spacing,
                  overlays, progress, log, shown_as, dicom_seg_file, series_uid, disagreement,
                  review_below, thumbnails) -> dict:
    """`predict_case` with the input at `local_input` (its temporary copy when `input_path` is
    a URL: `staged` maps it back)."""
    window = predictor.window or DEFAULT_WINDOW
    volume = read_input(local_input, spacing=spacing, window=window, series_uid=series_uid)
    volume.files, volume.notes = staged.to_source(volume.files), staged.to_source(volume.notes)
    volume.info = staged.to_source(volume.info)
    log(f"{input_path}: {volume.kind}, {volume.hu.shape[0]} slices of {volume.hu.shape[1]} x "
        f"{volume.hu.shape[2]}, spacing {tuple(round(s, 4) for s in volume.spacing)} mm "
        f"({volume.spacing_source})")
    for note in not_dicom_note(volume.info.get("skipped_files", [])):
        print(f"warning: {input_path}: {note}", file=sys.stderr)
    views = int(getattr(predictor, "views", 1))
    if disagreement and views < 2:
        raise PredictError("a disagreement map needs several models or --tta (one view here)")
    pred = predict_volume(predictor, volume.hu, progress, disagreement=disagreement)
    with writing("the output folder", out_dir):
        os.makedirs(out_dir, exist_ok=True)
    mask_path = os.path.join(out_dir, "mask.nii.gz")
    with writing("the mask", mask_path):
        volume.write_mask(pred["mask"], mask_path)
    agreement = {}
    if views > 1:
        spacing = [float(v) for v in volume.spacing]
        agreement = {
            "members": [{"model": os.path.abspath(member.path), "format": member.format,
                         "sha256": getattr(member, "fingerprint", None)}
                        for _, member in predictor.members],
            "tta": predictor.tta,
            **pred["agreement"].summary(float(np.prod(spacing)) if spacing[2] > 0 else None,
                                        review_below),
            "disagreement_file": None,
        }
        if disagreement:
            path = os.path.join(out_dir, DISAGREEMENT_FILE)
            with writing("the disagreement map", path):
                volume.write_mask(pred["disagreement"], path, dtype=np.float32)
            agreement["disagreement_file"] = DISAGREEMENT_FILE
    seg_file = None
    if volume.kind == "dicom" and dicom_seg_file:
        with writing("the DICOM SEG", os.path.join(out_dir, SEG_FILE)):
            seg_path = dicom_seg.write_dicom_seg(pred["mask"], volume.source_files,
                                                 os.path.join(out_dir, SEG_FILE))
        if seg_path is None:
            log("empty mask: no DICOM SEG written")
        else:
            seg_file = os.path.basename(seg_path)
    summary = summarize(volume, pred, {
        "input": input_path if files.is_remote(input_path) else os.path.abspath(input_path),
        "model": os.path.abspath(predictor.path),
        "model_format": predictor.format,
        "model_sha256": getattr(predictor, "fingerprint", None),
        "mask_file": os.path.basename(mask_path),
        "dicom_seg_file": seg_file,
        **agreement,
    })
    written = []
    if overlays:
        folder = os.path.join(out_dir, "overlays")
        with writing("the overlays folder", folder):
            os.makedirs(folder, exist_ok=True)
        for entry in summary["slices"]:
            k = entry["index"]
            name = f"slice_{k:04d}.png"
            with writing("an overlay image", os.path.join(folder, name)):
                save_overlay(os.path.join(folder, name), volume.hu[k], pred["mask"][k],
                              pred["boxes"][k], pred["valid"][k].astype(bool), window)
            written.append(os.path.join("overlays", name))
    summary["overlays"] = written
    if thumbnails:
        summary["review_slices"] = review.write_thumbnails(out_dir, volume.hu, pred["mask"],
                                                           window, pred.get("slice_ranking"))
        written = written + [p for e in summary["review_slices"] for p in e["images"].values()]
    summary["outputs"] = describe_outputs(out_dir, [os.path.basename(mask_path)]
                                          + ([seg_file] if seg_file else [])
                                          + ([DISAGREEMENT_FILE] if agreement.get(
                                              "disagreement_file") else [])
                                          + [p.replace(os.sep, "/") for p in written])
    summary["seconds"] = round(time.time() - t0, 2)
    with writing("the summary", os.path.join(out_dir, "summary.json")):
        write_json(os.path.join(out_dir, "summary.json"), summary)
    volume_text = (f"{summary['volume_ml']:.3f} mL" if summary["volume_ml"] is not None
                   else "volume unknown")
    log(f"mask: {summary['mask_voxels']} voxels, {volume_text}, slices "
        f"{summary['slice_range']}; {len(summary['slices'])} slices with findings -> "
        f"{shown_as or out_dir}")
    if agreement:
        sd = agreement["volume_sd_ml"]
        log(f"agreement of {agreement['views']} views: mean pairwise Dice "
            f"{agreement['mean_pairwise_dice']:.4f}"
            + (f", volume sd {sd:.3f} mL, range {agreement['volume_range_ml']:.3f} mL"
               if sd is not None else "")
            + (f"; REVIEW (below {review_below:g})" if agreement["review"] else ""))
    return summary


def check_out_dir(out_dir: str, inputs=()) -> None:
    """`PredictError` for an `out_dir` that is an existing file (or lies under one), or that is
    one of the folders `inputs` or lies inside it (`lsnet_tf.inference.many.check_out_dir`)."""
    try:
        many.check_out_dir(out_dir, inputs)
    except many.BatchError as e:
        raise PredictError(str(e)) from e


def _shown(model_paths) -> str:
    """What the summary names as ``model``: the --model argument, or several joined by + ."""
    paths = [model_paths] if isinstance(model_paths, str) else list(model_paths)
    return " + ".join(os.path.abspath(p) for p in paths)


def run(model_path, input_path: str, out_dir: str, batch_size: int = 8, spacing=None,
        overlays: bool = True, progress: Callable | None = progress_bar, log=print,
        dicom_seg_file: bool = True, series_uid=None, tta: str = "none",
        disagreement: bool = False, review_below: float = ensemble.REVIEW_BELOW) -> dict:
    """Predict `input_path` with `model_path` into `out_dir`; returns the summary dict.

    `model_path`: a model, a folder of models, or a list of them (an ensemble,
    `lsnet_tf.inference.ensemble`); `tta`: ``none``, ``flip`` or ``flip2``.

    Before the model loads: `PredictError` for a missing input, for an `out_dir` that is a
    file or lies inside a DICOM input folder (`check_out_dir`), and for models that cannot form
    an ensemble (`lsnet_tf.inference.predictors.resolve_models`)."""
    t0 = time.time()
    if not files.exists(input_path):
        raise PredictError(f"{input_path}: input not found")
    check_out_dir(out_dir, [input_path])
    members = predictors.resolve_models(model_path, tta, disagreement)
    predictor = predictors.load_members(members, batch_size, tta=tta, disagreement=disagreement,
                                        path=_shown(model_path))
    more = dict(spacing=spacing, overlays=overlays, progress=progress, log=log, t0=t0,
                dicom_seg_file=dicom_seg_file, series_uid=series_uid, disagreement=disagreement,
                review_below=review_below)
    if files.is_remote(out_dir):
        return buckets.predict_to_url(predict_case, predictor, input_path, out_dir, **more)
    return predict_case(predictor, input_path, out_dir, **more)


def run_many(model_path, input_path: str, out_dir: str, batch_size: int = 8, spacing=None,
             overlays: bool = True, overwrite: bool = False, progress: bool = True,
             log=print, options=None, dicom_seg_file: bool = True, tta: str = "none",
             disagreement: bool = False, review_below: float = ensemble.REVIEW_BELOW) -> list:
    """Predict every case of a folder or list file `input_path` (`lsnet_tf.inference.many`)
    into ``out_dir/<case>/``, loading the model once; returns the rows of ``cases.csv``.

    `options`: Beam ``PipelineOptions`` (`lsnet_tf.utils.beam.pipeline_options`) to run the cases as
    a pipeline, each worker loading the model once; None runs them in this process.
    `model_path`, `tta`, `disagreement`, `review_below`: as for `run` (the members are checked
    before any case is predicted; a skipped case's ``review`` is taken against `review_below`).
    """
    check_out_dir(out_dir, [input_path])
    cases = many.find_cases(input_path, out_dir, log=log)
    # Before the model loads: --out is no file, nor inside the input folder or a listed series.
    check_out_dir(out_dir, [input_path] + [c.input for c in cases if os.path.isdir(c.input)])
    # Before starting any worker.
    members = predictors.resolve_models(model_path, tta, disagreement)
    # `load` and `predict` are module-level functions of lsnet_tf.inference (or their partials):
    # a pipeline pickles them by reference, also when the command runs as
    # ``python -m lsnet_tf.predict``. Hashed once: the skip decision and every case's
    # summary.json use the same fingerprint.
    if predictors.is_ensemble(members, tta):
        member_sha256 = predictors.member_fingerprints(members)
        sha256 = ensemble.ensemble_fingerprint(member_sha256, tta, disagreement)
        load = functools.partial(predictors.load_ensemble, members, batch_size, tta=tta,
                                 disagreement=disagreement, model_sha256=sha256,
                                 member_sha256=member_sha256, path=_shown(model_path))
    else:
        if options is not None and not os.path.exists(members[0]):
            raise PredictError(f"{members[0]}: model not found")
        sha256 = fingerprint(members[0]) if os.path.exists(members[0]) else None
        load = functools.partial(predictors.load_predictor, members[0], batch_size,
                                 model_sha256=sha256)
    predict = functools.partial(predict_case, spacing=spacing, overlays=overlays,
                                dicom_seg_file=dicom_seg_file, disagreement=disagreement,
                                review_below=review_below, thumbnails=True)
    more = dict(load=load, overwrite=overwrite, progress=progress, log=log, options=options,
                model_sha256=sha256, review_below=review_below)
    if not files.is_remote(out_dir):
        return batch.run_batch(cases, out_dir, predict=predict, **more)
    # Resumed from a local copy of the outputs so far; each case published when done.
    with buckets.mirror(out_dir) as local:
        rows = batch.run_batch(cases, local, **more, predict=functools.partial(
            buckets.predict_and_publish, predict=predict, out_url=out_dir))
        buckets.publish_summary(local, out_dir)
    log(f"published to {out_dir}")
    return rows
