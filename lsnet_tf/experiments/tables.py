"""A table's Markdown: our numbers beside the paper's (``table_markdown``), DSC by target size
(``size_markdown``) and where the misses are (``finding``, ``finding_markdown``), from each
row's cells over its seeds (``summarize_row``).

The table goes to ``<out>/<table>-<dataset>[-e<N>].md`` and ``.json``:

- every cell is the mean ± sample standard deviation over the row's seeds (its n in a column)
  beside the paper's number, in percent; the JSON keeps each seed's values (``per_seed``);
- DSC by target size (small / medium / large: the target's share of the slice below 1 %,
  below 5 %, from 5 %), mean ± sd over seeds;
- where the misses are (``finding``): the share of slices with a target on which the model put
  some pixel on the target, nothing at all, or pixels only elsewhere, the DSC of the found ones
  and the share of small targets found, mean ± sd over seeds;
- "Each row's lowest run" (``stalls``): each row's lowest run against the row's median DSC,
  naming the stalled runs (DSC 0, or below ``STALL_RATIO`` × the median);
- "Claims": each claim of the paper that the table tests (``Table.claims``) as the paired
  difference of its two rows, with its interval, verdict and Holm's method
  (``lsnet_tf.experiments.claims``);
- how the table was made (``lsnet_tf.experiments.provenance``): the commit (and whether the
  tree had uncommitted changes), the command, the seeds of each row, the machine, and the
  training time (the sum of the runs' ``train_seconds`` from their ``eval.json``, and the
  process CPU time where recorded).
"""
from __future__ import annotations

import numpy as np

from lsnet_tf.experiments.catalogue import DATASET_INFO, EVIDENCE_SEEDS, METRICS, Table, _pct
from lsnet_tf.metrics import statistics
from lsnet_tf.metrics.evaluation import SIZE_BUCKETS
from lsnet_tf.metrics.segmentation import scores_from_counts, size_bucket


def _mean_sd_text(v: dict, n_row: int | None = None) -> str:
    """``mean ± sd`` (``mean`` alone from one value, ``–`` from none), `` (n=k)`` when ``k``
    differs from the row's number of seeds `n_row`."""
    if v["mean"] is None:
        return "–"
    text = f"{v['mean']:.2f}" if v["sd"] is None else f"{v['mean']:.2f} ± {v['sd']:.2f}"
    return text if n_row is None or v["n"] == n_row else f"{text} (n={v['n']})"


def table_markdown(table: Table, dataset: str, rows, summary: dict,
                   empty_slices: str = "exclude", note: str = "") -> str:
    """Our numbers beside the paper's: each metric cell reads ``mean ± sd / paper``.

    Args:
      summary: ``{row config: {"seeds": [...], "ours": {metric key: mean_sd(...)}}}``; a cell
        whose number of values differs from the row's number of seeds (a metric some runs do not
        have) says its ``(n=k)``.
    """
    titles = [METRICS[c][0] for c in table.columns]
    lines = [f"### {table.title} — {dataset}", ""]
    if note:
        lines += [note, ""]
    lines += ["| " + " | ".join(table.head + ("n",) + tuple(titles)) + " |",
              "|" + "---|" * (len(table.head) + 1 + len(titles))]
    for row in rows:
        n = len(summary[row.config]["seeds"])
        cells = (list(row.cells) if row.cells else [row.label]) + [str(n)]
        for c in table.columns:
            text = _mean_sd_text(summary[row.config]["ours"][c], n)
            paper = row.paper.get(c)
            if paper is not None:
                text += f" / {paper:.2f}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    over = "the slices with a target" if empty_slices == "exclude" else "all slices"
    lines += ["", "Cells read `ours / paper`, in %; ours is the mean ± sample standard deviation "
              "over the row's n seeds (one seed: the value alone). Per-slice scores are averaged "
              f"over {over}; the per-case (3-D) DSC is ours only (the paper reports per-slice "
              "scores)."]
    return "\n".join(lines) + "\n"


def size_markdown(rows, summary: dict) -> str:
    """DSC by target size per row: ``mean ± sd (slices)`` over seeds in each bucket of
    ``metrics.evaluation`` (`summary`: ``{row: {"seeds", "dsc_by_size": {bucket: {"mean", "sd",
    "n", "slices"}}}}``)."""
    lines = ["| Method | n | " + " | ".join(f"{b} DSC(%) (slices)" for b in SIZE_BUCKETS) + " |",
             "|---|---|" + "---|" * len(SIZE_BUCKETS)]
    for row in rows:
        n = len(summary[row.config]["seeds"])
        cells = [row.label, str(n)]
        for b in SIZE_BUCKETS:
            v = summary[row.config]["dsc_by_size"][b]
            text = _mean_sd_text(v, n)
            cells.append(text if v["mean"] is None else f"{text} ({v['slices']})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Buckets: the target's share of the slice below 1 % (small), below 5 % "
              "(medium), from 5 % (large); validation fold, slices with a target; mean ± sample "
              "standard deviation over the row's n seeds."]
    return "\n".join(lines) + "\n"


FINDING = ("found", "missed", "elsewhere", "dsc_found", "small_found")
FINDING_TITLES = {"found": "found(%)", "missed": "missed(%)", "elsewhere": "only elsewhere(%)",
                  "dsc_found": "DSC where found(%)", "small_found": "small targets found(%)"}


def finding(slices) -> dict:
    """Where a model's misses are, over the slices with a target of one evaluation's ``slices``
    (``tp``, ``n_true``, ``n_pred``, ``pixels``), in %: ``found`` (some predicted pixel on the
    target, ``tp > 0``), ``missed`` (nothing predicted), ``elsewhere`` (pixels predicted, none on
    the target: a look-alike or another place taken for it); ``dsc_found``, the mean per-slice
    DSC of the found slices (how well a found target is delineated); ``small_found``, ``found``
    among the small targets (``metrics.segmentation.size_bucket``). None where no slice counts.
    """
    target = [r for r in slices if r["n_true"] > 0]
    found = [r for r in target if r["tp"] > 0]
    small = [r for r in target if size_bucket(r["n_true"], r["pixels"]) == "small"]

    def share(part, whole):
        return _pct(len(part) / len(whole)) if whole else None

    return {"found": share(found, target),
            "missed": share([r for r in target if r["n_pred"] == 0], target),
            "elsewhere": share([r for r in target if r["n_pred"] > 0 and r["tp"] == 0], target),
            "dsc_found": _pct(float(np.mean([scores_from_counts(r["tp"], r["n_true"], r["n_pred"])
                                             ["dsc"] for r in found]))) if found else None,
            "small_found": share([r for r in small if r["tp"] > 0], small)}


def finding_markdown(rows, summary: dict) -> str:
    """Each row's ``finding`` over seeds (`summary`: ``{row: {"seeds", "finding": {key:
    mean_sd}}}``): mean ± sd per column."""
    lines = ["| Method | n | " + " | ".join(FINDING_TITLES[k] for k in FINDING) + " |",
             "|---|---|" + "---|" * len(FINDING)]
    for row in rows:
        n = len(summary[row.config]["seeds"])
        lines.append("| " + " | ".join([row.label, str(n)] + [
            _mean_sd_text(summary[row.config]["finding"][k], n) for k in FINDING]) + " |")
    lines += ["", "Over the validation slices with a target: found, some predicted pixel on the "
              "target; missed, nothing predicted; only elsewhere, pixels predicted but none on the "
              "target (a look-alike or another place taken for it); DSC where found, the mean "
              "per-slice DSC of the found slices; mean ± sample standard deviation over the row's "
              "n seeds."]
    return "\n".join(lines) + "\n"


# A run below this fraction of its row's median per-slice DSC, or at DSC 0 (no target found:
# a row whose runs mostly stall has a median of 0 too), has stalled (the protocol of
# docs/experiments.md: it is reported, and nothing is changed for it on the data it came from).
STALL_RATIO = 0.9


def stalls(rows, summary: dict, name=str) -> list[dict]:
    """Each row's lowest run against the row's median per-slice DSC, and every stalled run
    (`summary`: ``{row: {"values": {unit: {"dsc": %}}}}``; `name` spells a unit):
    ``{"config", "median", "lowest", "unit", "ratio", "stalled", "stalled_units"}`` per row with
    a DSC. ``ratio`` is lowest / median (None for a median of 0); a run has stalled when its DSC
    is 0 or below ``STALL_RATIO`` × the median; ``stalled_units`` are ``{"unit", "dsc",
    "ratio"}`` in unit order, ``stalled`` whether there are any."""
    out = []
    for row in rows:
        values = {u: v["dsc"] for u, v in summary[row.config]["values"].items()
                  if v.get("dsc") is not None}
        if not values:
            continue
        median = float(np.median(list(values.values())))
        unit = min(values, key=values.get)

        def ratio(v):
            return v / median if median > 0 else None

        stalled = [{"unit": name(u), "dsc": v, "ratio": ratio(v)}
                   for u, v in sorted(values.items())
                   if v == 0 or (median > 0 and v / median < STALL_RATIO)]
        out.append({"config": row.config, "median": median, "lowest": values[unit],
                    "unit": name(unit), "ratio": ratio(values[unit]),
                    "stalled": bool(stalled), "stalled_units": stalled})
    return out


def stall_markdown(rows, found: list[dict]) -> str:
    """``stalls`` as a table (the row's median, its lowest run, their ratio) and a sentence
    naming the stalled runs, or saying there are none."""
    labels = {row.config: row.label for row in rows}
    lines = ["| Method | median DSC(%) | lowest run | lowest / median |", "|---|---|---|---|"]
    for s in found:
        ratio = "–" if s["ratio"] is None else f"{s['ratio']:.3f}"
        lines.append(f"| {labels[s['config']]} | {s['median']:.2f} | {s['unit']}: "
                     f"{s['lowest']:.2f} | {'**' + ratio + '** (stalled)' if s['stalled'] else ratio} |")

    def one(u):
        return "DSC 0, no target found" if u["dsc"] == 0 else f"{u['ratio']:.3f} ×"

    stalled = [f"{labels[s['config']]} " + ", ".join(f"{u['unit']} ({one(u)})"
                                                   for u in s["stalled_units"])
               for s in found if s["stalled"]]
    lines += ["", f"A run has stalled when its per-slice DSC is 0 (no target found) or below "
              f"{STALL_RATIO} × its row's median: it is reported, nothing is changed for it on "
              "this data, and a remedy would be tried on a tuning set and the whole table run "
              "again. " + ("Stalled: " + "; ".join(stalled) + "." if stalled
                           else "No run has stalled.")
              + " Each run's figures are in the table's JSON (`per_seed`)."]
    return "\n".join(lines) + "\n"


def summarize_row(table: Table, evaluations: dict) -> dict:
    """One row's cells over seeds, from ``{seed: {split: evaluation result}}``.

    Returns:
      ``{"seeds": [...], "values": {seed: {metric key: value (%)}}, "ours": {metric key:
      mean_sd}, "dsc_by_size": {bucket: {"mean", "sd", "n", "slices"}}, "finding_per_seed":
      {seed: finding(...)}, "finding": {key: mean_sd}}`` (percent; ``slices`` the bucket's slices,
      one number when every seed has the same, else ``"lo–hi"``).
    """
    seeds = list(evaluations)
    values = {s: {c: METRICS[c][1](evaluations[s]) for c in table.columns} for s in seeds}
    by_size = {}
    for b in SIZE_BUCKETS:
        buckets = [evaluations[s]["val"]["dsc_by_size"][b] for s in seeds]
        slices = sorted({v["n"] for v in buckets})
        by_size[b] = dict(statistics.mean_sd([_pct(v["dsc"]) for v in buckets]),
                          slices=(slices[0] if len(slices) == 1
                                  else f"{slices[0]}–{slices[-1]}") if slices else 0)
    found = {s: finding(evaluations[s]["val"]["slices"]) for s in seeds}
    return {"seeds": seeds, "values": values,
            "ours": {c: statistics.mean_sd([values[s][c] for s in seeds]) for c in table.columns},
            "dsc_by_size": by_size, "finding_per_seed": found,
            "finding": {k: statistics.mean_sd([found[s][k] for s in seeds]) for k in FINDING}}


def _dataset_note(dataset: str) -> str:
    """What the table's data is: a tuning set, an evidence set (with its generator seed and
    folds), or the paper's."""
    info = DATASET_INFO[dataset]
    if info.role == "tuning":
        return ("On a tuning set: the settings of configs/ were chosen by watching its "
                "validation fold. ")
    if info.role == "evidence":
        return (f"On an evidence set (generator seed {EVIDENCE_SEEDS[dataset]}, drawn after "
                f"every setting was frozen; nothing was chosen by watching it), "
                f"{info.folds}-fold cross-validation by patient: each (fold, seed) is one run "
                "trained on the other folds and scored on its held-out fold. ")
    return (f"{info.folds}-fold cross-validation by patient. " if info.folds else "")
