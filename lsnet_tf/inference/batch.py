"""Running many cases (`lsnet_tf.inference.many` finds them): each into its case folder, the
summary ``cases.csv``, resuming, failures, and the Apache Beam pipeline (`PredictCaseFn`).

Outputs
-------
- ``OUT/<case>/``: ``mask.nii.gz``, ``overlays/``, ``summary.json``, as a single prediction
  writes them (the summary's ``outputs`` records each file's size and SHA-256). A case is
  written into ``OUT/.<case>.partial/`` and renamed to ``OUT/<case>/`` when complete, so a
  killed run never leaves a half case that looks complete.
- ``OUT/cases.csv`` and ``OUT/cases.json`` (a list of rows): one row per case handled so far, in
  case order, with the columns `CASE_COLUMNS`: case, input (absolute path), slices, volume_ml
  (empty when the slice spacing is unknown), seconds (reading, predicting and writing the
  case), status (``done``, ``skipped`` or ``failed``) and error (the file and the reason, for a
  failed case); for an ensemble or mirrored prediction (`lsnet_tf.inference.ensemble`) also
  mean_pairwise_dice, volume_sd_ml, volume_range_ml and review (empty otherwise; a skipped
  case's review is taken against this run's ``--review-below``). Both are rewritten atomically
  after each case, so a killed run leaves a consistent summary of the cases before the kill.
- ``OUT/review.html``: the cases on one static page, lowest agreement first, with thumbnails
  (`lsnet_tf.inference.review`), written when every case is done (skipped ones included); a
  run removes the previous run's page when it starts.

Resuming
--------
Running the same command again skips every case whose ``OUT/<case>/summary.json`` exists,
names the same input and the same model content (``model_sha256``, `lsnet_tf.utils.files.fingerprint`
of the model file or folder), and whose listed ``outputs`` are all there with the size and
SHA-256 it recorded (status ``skipped``, its slices, volume and seconds read from that summary).
A case predicted by another model (retrained or re-exported at the same path) is predicted
again, as is one whose outputs are missing or changed (the log names the file and what is
wrong) or whose summary records no checksums (an older version wrote it); leftover
``.partial`` folders are removed and those cases redone. ``--overwrite``
redoes every case (the old folder is replaced only once the new one is complete). A case folder
that holds the prediction of another input (same case name, other path) is an error before
anything runs (choose another ``--out``, or ``--overwrite``).

Failures
--------
A case that cannot be predicted (an unreadable file, a wrong shape, an empty DICOM folder, an
unsafe or shared name, a file that cannot be written, ...) is reported on stderr and in the
summary with its file and reason, and the other cases go on. A file or folder that cannot be
written is named with what it is (``OUT/cases.csv: cannot write the summary of the cases
(Permission denied)``).
The exit status is 1 when a case failed, 0 otherwise.

Progress: one line per case on stderr (``cases [###.......] 3/10 NAME``), the slice bar of
`lsnet_tf.inference.volume` under it.

On Apache Beam
--------------
``--runner NAME`` (with pipeline options in ``--beam-options "..."`` or after ``--``, see
`lsnet_tf.utils.beam`) runs the cases to predict as a pipeline, one element per case, e.g. on two
local processes::

    python -m lsnet_tf.predict --model M --input imagesTs --out preds --runner DirectRunner \
        --beam-options "--direct_num_workers=2 --direct_running_mode=multi_processing"

Finding the cases, the name checks and skipping complete cases happen before the pipeline, as
in process, and so does one load of the model (a model that cannot be loaded is one error line,
not a traceback from every worker); each worker then loads the model once (`PredictCaseFn`, a
DoFn whose ``setup`` loads it) and writes each case as above (``OUT`` must be a folder every
worker can write: any local folder for the DirectRunner). ``cases.csv``/``cases.json`` are
written by the pipeline's last step, when every case is done (a killed pipeline leaves the
complete case folders, which the next run skips); failed cases are reported on stderr by the
command after the pipeline. No progress bars.

Why a DoFn and not ``apache_beam.ml.inference.RunInference``: the unit of work is a case (read
a NIfTI file or a DICOM series, predict its slices in batches of ``--batch-size``, write the
mask, overlays and summary in the input's own geometry), not a tensor. RunInference batches
elements into one model call (``BatchElements``), which volumes of different slice counts and
sizes cannot share, and its model handler would have to read and write files as side effects
of ``run_inference``; the slices of a case are batched inside the case instead. A DoFn with the
model loaded in ``setup`` keeps one model per worker process, as RunInference's shared model
does, and runs exactly the in-process code per case.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import time
from typing import Callable, Sequence

from lsnet_tf.utils import beam
from lsnet_tf.utils.files import check_outputs, write_json, write_text, writing
from lsnet_tf.inference.many import BatchError, Case, case_path, check_case_names
from lsnet_tf.inference import review

__all__ = ["CASE_COLUMNS", "run_batch", "write_summary", "predict_one", "case_bar"]

CASE_COLUMNS = ("case", "input", "slices", "volume_ml", "seconds", "status", "error",
                "mean_pairwise_dice", "volume_sd_ml", "volume_range_ml", "review")
# The columns of an ensemble or mirrored prediction (`lsnet_tf.inference.ensemble`); empty
# otherwise.
AGREEMENT_COLUMNS = CASE_COLUMNS[-4:]


def write_summary(out_dir: str, rows: Sequence[dict]) -> None:
    """Write `rows` to ``out_dir/cases.csv`` and ``cases.json``, each atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CASE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CASE_COLUMNS})
    with writing("the summary of the cases", os.path.join(out_dir, "cases.csv")):
        write_text(os.path.join(out_dir, "cases.csv"), text.getvalue())
    with writing("the summary of the cases", os.path.join(out_dir, "cases.json")):
        write_json(os.path.join(out_dir, "cases.json"), [dict(row) for row in rows])


def _row(case: Case, summary: dict | None, status: str, seconds=None, error=None,
         review_below: float | None = None) -> dict:
    """A summary row; `review_below` (skipped cases) takes ``review`` against this run's
    threshold from the case's recorded ``mean_pairwise_dice``."""
    row = {"case": case.name, "input": case.input,
           "slices": int(summary["shape"][0]) if summary else None,
           "volume_ml": summary.get("volume_ml") if summary else None,
           "seconds": summary.get("seconds") if summary else seconds,
           "status": status, "error": error}
    row.update({k: summary.get(k) if summary else None for k in AGREEMENT_COLUMNS})
    if review_below is not None and row["mean_pairwise_dice"] is not None:
        row["review"] = bool(row["mean_pairwise_dice"] < review_below)
    return row


def case_bar(done: int, total: int, name: str = "", stream=None, width: int = 30) -> None:
    """One line ``cases [#####.....] done/total NAME`` on `stream` (stderr by default)."""
    stream = stream or sys.stderr
    filled = int(round(width * done / max(total, 1)))
    stream.write(f"\rcases [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {name}\n")
    stream.flush()


# ----------------------------------------------------------------------------------- running
def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _partial(out_dir: str, name: str) -> str:
    return case_path(out_dir, name, ".{}.partial")


def _old(out_dir: str, name: str) -> str:
    return case_path(out_dir, name, ".{}.old")


def _complete_cases(cases: Sequence[Case], out_dir: str, model_sha256: str | None = None,
                    log=print):
    """``({name: summary}, stale, incomplete)``: the cases whose outputs are complete (every
    output the summary lists is there with the size and SHA-256 it recorded), how many complete
    ones another model predicted (`model_sha256` given and different: not in the dict, redone),
    and how many have outputs missing or changed (logged with the reason, redone); `BatchError`
    when a case folder holds the prediction of another input."""
    complete, foreign, stale, incomplete = {}, [], 0, 0
    for case in cases:
        if case.error is not None:
            continue
        folder = case_path(out_dir, case.name)
        path = os.path.join(folder, "summary.json")
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                summary = json.load(f)
        except (OSError, ValueError):
            continue  # unreadable: redone
        if not isinstance(summary, dict) or "shape" not in summary:
            continue
        if summary.get("input") != case.input:
            foreign.append(f"{os.path.join(out_dir, case.name)} holds {summary.get('input')}, "
                           f"not {case.input}")
        elif model_sha256 is not None and summary.get("model_sha256") != model_sha256:
            stale += 1
        else:
            problems = check_outputs(folder, summary.get("outputs"))
            if problems:
                incomplete += 1
                log(f"case {case.name}: not complete ({'; '.join(problems)}): predicted again")
            else:
                complete[case.name] = summary
    if foreign:
        raise BatchError(f"{out_dir}: case folders hold the predictions of other inputs "
                         f"(choose another --out, or --overwrite to replace them): "
                         + "; ".join(foreign))
    return complete, stale, incomplete


def _reason(error: Exception, case: Case) -> str:
    """The message of a failed case, naming its file."""
    text = (str(error) if isinstance(error, (ValueError, OSError))
            else f"{type(error).__name__}: {error}")
    if case.input not in text and os.path.basename(case.input) not in text:
        text = f"{case.input}: {text}"
    return " ".join(text.split())  # one line in the CSV and on stderr


def _install(partial: str, final: str, old: str) -> None:
    """Put the finished folder `partial` in place of `final` (moved aside to `old` first)."""
    with writing("the case folder (renaming it into place)", final):
        if os.path.lexists(final):
            _remove(old)
            os.rename(final, old)
            os.rename(partial, final)
            _remove(old)
        else:
            os.rename(partial, final)


def predict_one(case: Case, out_dir: str, predictor, predict: Callable, progress: bool = True,
                log=print, stream=None) -> dict:
    """Predict `case` into ``out_dir/<case>/`` by way of its ``.partial`` folder; the summary row
    (``failed`` with the reason, reported on `stream`, when the case cannot be predicted)."""
    stream = stream or sys.stderr
    t0 = time.time()
    partial = None
    try:
        if case.error is not None:
            raise BatchError(case.error)
        final, partial, old = (case_path(out_dir, case.name), _partial(out_dir, case.name),
                               _old(out_dir, case.name))
        _remove(partial)
        summary = predict(predictor, case.input, partial, log=log, t0=t0, shown_as=final,
                          **({} if progress else {"progress": None}))
        _install(partial, final, old)
    except Exception as e:  # noqa: BLE001 - one broken case must not stop the others
        if partial is not None:
            _remove(partial)
        reason = _reason(e, case)
        stream.write(f"\nerror: case {case.name}: {reason}\n")
        stream.flush()
        return _row(case, None, "failed", seconds=round(time.time() - t0, 2), error=reason)
    return _row(case, summary, "done")


def run_batch(cases: Sequence[Case], out_dir: str, *, load: Callable, predict: Callable,
              overwrite: bool = False, progress: bool = True, log=print,
              options=None, model_sha256: str | None = None,
              review_below: float | None = None) -> list[dict]:
    """Predict `cases` into `out_dir` (see the module docstring); returns the summary rows.

    `model_sha256`: the model's fingerprint; a complete case whose summary names another is
    predicted again (None: any model's complete case is skipped). `review_below`: the
    ``review`` threshold of an ensemble's agreement, applied to the skipped cases' recorded
    ``mean_pairwise_dice`` (None: their recorded ``review``).

    `load()` returns the predictor (called once, and only when a case is to be predicted);
    ``predict(predictor, input, folder, log=, t0=, shown_as=[, progress=None])`` writes one case
    (`lsnet_tf.inference.cases.predict_case`). Both must pickle by reference (module-level
    functions or their ``functools.partial``) when `options` (Beam ``PipelineOptions``) runs the
    cases as a pipeline. Raises `BatchError` before anything runs when a case folder holds
    another input's prediction.
    """
    stream = sys.stderr
    cases = check_case_names(cases)
    for case in cases:  # left by a killed run
        if case.error is not None:
            continue
        _remove(_partial(out_dir, case.name))
        final, old = case_path(out_dir, case.name), _old(out_dir, case.name)
        if os.path.isdir(old) and not os.path.lexists(final):
            os.rename(old, final)  # killed while replacing it: the previous outputs come back
        _remove(old)
    complete, stale, incomplete = ({}, 0, 0) if overwrite else _complete_cases(
        cases, out_dir, model_sha256, log)
    refused = [c for c in cases if c.error is not None]
    todo = [c for c in cases if c.name not in complete and c.error is None]
    redone = [f"{stale} of them predicted by another model" if stale else "",
              f"{incomplete} with outputs missing or changed" if incomplete else ""]
    log(f"{len(cases)} cases: {len(todo)} to predict"
        + (f" ({', '.join(r for r in redone if r)})" if stale or incomplete else "")
        + (f", {len(refused)} refused (unsafe or shared names)" if refused else "")
        + f", {len(complete)} complete already "
        f"(skipped{'; --overwrite redoes them' if complete else ''}) -> {out_dir}"
        + (f" with {beam.describe(options)}" if options is not None and todo else ""))
    review.remove_page(out_dir)  # the page of this run comes when its cases are done
    if options is not None:
        if todo:  # a model that cannot load is one error here, not a traceback in each worker
            load()
        rows = _run_pipeline(cases, complete, todo, out_dir, load, predict, options,
                             review_below)
        for row in rows:
            if row["status"] == "failed":
                stream.write(f"error: case {row['case']}: {row['error']}\n")
    else:
        rows = _run_in_process(cases, complete, out_dir, load() if todo else None, predict,
                               progress, log, stream, review_below)
    review.write_page(out_dir, rows, review_below)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    if progress or options is not None:
        case_bar(len(cases), len(cases), ", ".join(f"{v} {k}" for k, v in counts.items()), stream)
    log(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed -> "
        f"{os.path.join(out_dir, 'cases.csv')}, {os.path.join(out_dir, review.PAGE)}")
    return rows


def _make_out_dir(out_dir: str) -> None:
    with writing("the output folder", out_dir):
        os.makedirs(out_dir, exist_ok=True)


def _run_in_process(cases, complete, out_dir, predictor, predict, progress, log, stream,
                    review_below=None):
    _make_out_dir(out_dir)
    rows = []
    for i, case in enumerate(cases):
        if progress:
            case_bar(i, len(cases), case.name, stream)
        if case.error is None and case.name in complete:
            rows.append(_row(case, complete[case.name], "skipped",
                             review_below=review_below))
        else:
            rows.append(predict_one(case, out_dir, predictor, predict, progress, log, stream))
        write_summary(out_dir, rows)
    return rows


# ----------------------------------------------------------------------------------- Beam
def _quiet(*args, **kwargs):
    pass


def _build_predict_case_fn():
    import apache_beam
    from apache_beam.metrics import Metrics

    class PredictCaseFn(apache_beam.DoFn):
        """Beam: one `Case` -> its summary row, the case written as in process; the model is
        loaded once per worker, in `setup`."""

        def __init__(self, out_dir: str, load: Callable, predict: Callable):
            super().__init__()
            self.out_dir, self.load, self.predict = out_dir, load, predict
            self.predictor = None

        def setup(self):
            self.predictor = self.load()

        def process(self, case):
            row = predict_one(case, self.out_dir, self.predictor, self.predict, progress=False,
                              log=_quiet, stream=io.StringIO())  # the command reports failures
            Metrics.counter("lsnet_tf.predict", f"cases_{row['status']}").inc()
            yield row

    # Pickled by reference (``lsnet_tf.inference.batch.PredictCaseFn``, see `__getattr__`).
    PredictCaseFn.__module__ = __name__
    PredictCaseFn.__qualname__ = "PredictCaseFn"
    return PredictCaseFn


def __getattr__(name):
    """`PredictCaseFn` is built on first use, so that importing this module (and
    `lsnet_tf.predict`) does not import Apache Beam."""
    if name == "PredictCaseFn":
        cls = _build_predict_case_fn()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _publish_rows(rows, out_dir: str, order: list, skipped: list) -> int:
    """Beam's last step: the summary of the skipped, refused and predicted cases, in case order
    (`order`: ``[case, input]`` pairs)."""
    by_case = {(row["case"], row["input"]): row for row in list(skipped) + list(rows)}
    write_summary(out_dir, [by_case[tuple(key)] for key in order if tuple(key) in by_case])
    return len(by_case)


def _run_pipeline(cases, complete, todo, out_dir, load, predict, options,
                  review_below=None) -> list[dict]:
    skipped = [_row(c, complete[c.name], "skipped", review_below=review_below)
               if c.error is None
               else predict_one(c, out_dir, None, predict, progress=False, log=_quiet,
                                stream=io.StringIO())  # refused: reported after the pipeline
               for c in cases if c.error is not None or c.name in complete]
    _make_out_dir(out_dir)
    if not todo:
        write_summary(out_dir, skipped)
        return skipped
    import apache_beam

    # What the pipeline pickles names this module by its import name (and `PredictCaseFn` is
    # built by the module's `__getattr__` on first use).
    from lsnet_tf.inference import batch as this

    with apache_beam.Pipeline(options=options) as pipeline:
        _ = (pipeline
             | "Cases" >> apache_beam.Create(list(todo))
             | "Spread" >> apache_beam.Reshuffle()
             | "Predict" >> apache_beam.ParDo(this.PredictCaseFn(out_dir, load, predict))
             | "Collect" >> apache_beam.combiners.ToList()
             | "WriteSummary" >> apache_beam.Map(this._publish_rows, out_dir,
                                                 [(c.name, c.input) for c in cases], skipped))
    with open(os.path.join(out_dir, "cases.json"), encoding="utf-8") as f:
        return json.load(f)