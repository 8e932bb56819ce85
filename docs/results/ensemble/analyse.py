"""Score the fold models, their ensemble and the ensemble with mirroring; choose and test the
review threshold (issue 31; the protocol is README.md's).

    python docs/results/ensemble/analyse.py tune --preds P --labels L --out tuning.json
    python docs/results/ensemble/analyse.py test --preds P --labels L --review-below T \
        --out test.json --markdown test.md --plot dsc-vs-agreement.png

``P/<configuration>/<case>/`` are the outputs of ``python -m lsnet_tf.predict`` on a folder of
cases (``mask.nii.gz``, ``summary.json``), one folder per configuration: ``fold0`` ... ``fold3``
(each model alone), ``ensemble`` (the 4), ``ensemble_flip`` (the 4 with ``--tta flip``); ``tune``
needs ``ensemble`` (``ensemble_flip`` if present). ``P/<configuration>.eval.json``, when present,
is ``python -m lsnet_tf.evaluate --predictions P/<configuration> --labels L``'s result: its
per-case DSC must equal the one computed here.

Per case: the 3-D DSC ``2 |P ∩ T| / (|P| + |T|)`` of the whole volume; per slice (axis 0 of the
stored (slice, row, col) arrays) the counts, whose DSC over the slices with a target is the
paper's per-slice DSC (slices without a target excluded, as ``evaluate --run``'s default).
"""
from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

MEMBERS = ("fold0", "fold1", "fold2", "fold3")
WORST_FRACTION = 0.10


# ----------------------------------------------------------------------------------- scoring
def _read(path: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj)


def score_case(pred_path: str, label_path: str) -> dict:
    pred, label = _read(pred_path) != 0, _read(label_path) != 0
    if pred.shape != label.shape:
        raise SystemExit(f"{pred_path}: shape {pred.shape}, label {label.shape}")
    tp = int(np.count_nonzero(pred & label))
    n_pred, n_true = int(np.count_nonzero(pred)), int(np.count_nonzero(label))
    slices = []
    for z in range(label.shape[0]):
        t, p = label[z], pred[z]
        slices.append([int(np.count_nonzero(t & p)), int(np.count_nonzero(t)),
                       int(np.count_nonzero(p))])
    target = [2 * tp_ / (nt + np_) for tp_, nt, np_ in slices if nt > 0]
    return {"dsc": 2 * tp / (n_true + n_pred) if n_true + n_pred else 1.0,
            "slice_dsc_mean": float(np.mean(target)) if target else None,
            "target_slices": len(target),
            "fp_empty_slices": sum(1 for _, nt, np_ in slices if nt == 0 and np_ > 0),
            "empty_slices": sum(1 for _, nt, _ in slices if nt == 0),
            "slices": slices}


def score_configuration(preds: str, name: str, labels: str) -> dict:
    folder = os.path.join(preds, name)
    cases = sorted(c[:-len(".nii.gz")] for c in os.listdir(labels) if c.endswith(".nii.gz"))
    out = {}
    for case in cases:
        row = score_case(os.path.join(folder, case, "mask.nii.gz"),
                         os.path.join(labels, f"{case}.nii.gz"))
        with open(os.path.join(folder, case, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        # review is recomputed against the threshold under test, not the one predict used
        for key in ("mean_pairwise_dice", "min_pairwise_dice", "views", "volume_sd_ml"):
            if key in summary:
                row[key] = summary[key]
        out[case] = row
    check = os.path.join(preds, f"{name}.eval.json")
    if os.path.isfile(check):  # evaluate --predictions: the same per-case DSC
        with open(check, encoding="utf-8") as f:
            for c in json.load(f)["cases"]:
                if abs(c["dsc"] - out[c["case"]]["dsc"]) > 1e-9:
                    raise SystemExit(f"{name}/{c['case']}: DSC {out[c['case']]['dsc']} here, "
                                     f"{c['dsc']} in {check}")
    return out


def pooled_slice_dsc(rows: dict) -> dict:
    """The paper's per-slice DSC: mean (and sd) over every slice with a target of every case."""
    values = [2 * tp / (nt + np_) for r in rows.values() for tp, nt, np_ in r["slices"] if nt]
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)),
            "n_slices": len(values),
            "fp_empty_slices": sum(r["fp_empty_slices"] for r in rows.values()),
            "empty_slices": sum(r["empty_slices"] for r in rows.values())}


# ----------------------------------------------------------------------------------- review
def worst_cases(dsc: dict, fraction: float = WORST_FRACTION) -> list[str]:
    """The ceil(fraction * n) cases of lowest DSC (ties by case name)."""
    k = math.ceil(fraction * len(dsc))
    return sorted(dsc, key=lambda c: (dsc[c], c))[:k]


def flag_scores(agreement: dict, worst: list[str], threshold: float) -> dict:
    flagged = sorted(c for c, a in agreement.items() if a < threshold)
    hit = sorted(set(flagged) & set(worst))
    precision = len(hit) / len(flagged) if flagged else None
    recall = len(hit) / len(worst) if worst else None
    f1 = (2 * len(hit) / (len(flagged) + len(worst))) if flagged or worst else None
    return {"threshold": threshold, "flagged": flagged, "n_flagged": len(flagged),
            "worst": sorted(worst), "n_worst": len(worst), "flagged_among_worst": hit,
            "precision": precision, "recall": recall, "f1": f1}


def _round_inside(low: float, high: float) -> float:
    """The midpoint of (low, high] rounded to 2 decimals, or 3, ..., staying inside."""
    mid = (low + high) / 2.0
    for digits in range(2, 10):
        t = round(mid, digits)
        if low < t <= high:
            return t
    return mid


def choose_threshold(agreement: dict, dsc: dict) -> dict:
    """README's rule: flag the k cases of lowest agreement, k maximising F1 against the worst
    10 % by DSC (ties: the fewest flagged); the threshold a round number in (a_k, a_k+1]."""
    worst = worst_cases(dsc)
    a = sorted(set(agreement.values()))
    best = None
    for i in range(len(a)):  # flag every case with agreement <= a[i]
        high = a[i + 1] if i + 1 < len(a) else 1.0 + 1e-9
        t = _round_inside(a[i], high)
        s = flag_scores(agreement, worst, t)
        if best is None or s["f1"] > best["f1"]:
            best = s
    return best


def spearman(x, y) -> dict:
    from scipy import stats

    rho, p = stats.spearmanr(x, y)
    return {"rho": float(rho), "p": float(p), "n": len(x)}


# ----------------------------------------------------------------------------------- commands
def tune(args) -> dict:
    result = {"set": "tuning", "labels": os.path.abspath(args.labels), "configurations": {}}
    for name in ("ensemble", "ensemble_flip"):
        if not os.path.isdir(os.path.join(args.preds, name)):
            continue
        rows = score_configuration(args.preds, name, args.labels)
        dsc = {c: r["dsc"] for c, r in rows.items()}
        agreement = {c: r["mean_pairwise_dice"] for c, r in rows.items()}
        result["configurations"][name] = {
            "views": next(iter(rows.values()))["views"],
            "chosen": choose_threshold(agreement, dsc),
            "spearman_agreement_dsc": spearman(list(agreement.values()), list(dsc.values())),
            "case_dsc_mean": float(np.mean(list(dsc.values()))),
            "slice_dsc": pooled_slice_dsc(rows),
            "cases": {c: {k: v for k, v in r.items() if k != "slices"} for c, r in rows.items()},
        }
    result["review_below"] = result["configurations"]["ensemble"]["chosen"]["threshold"]
    return result


def _interval(a: list, b: list) -> dict:
    from lsnet_tf.metrics.statistics import corrected_t

    r = corrected_t([100 * x for x in a], [100 * y for y in b], 0.0)
    return {k: r[k] for k in ("mean", "low", "high", "tost_low", "tost_high", "n", "p",
                              "p_equivalence", "verdict", "p_verdict")}


def test(args) -> dict:
    from lsnet_tf.metrics.statistics import holm

    names = [n for n in (*MEMBERS, "ensemble", "ensemble_flip")]
    rows = {n: score_configuration(args.preds, n, args.labels) for n in names}
    cases = sorted(rows["ensemble"])
    dsc = {n: [rows[n][c]["dsc"] for c in cases] for n in names}
    sdsc = {n: [rows[n][c]["slice_dsc_mean"] for c in cases] for n in names}
    member_mean = {"dsc": list(np.mean([dsc[m] for m in MEMBERS], axis=0)),
                   "slice": list(np.mean([sdsc[m] for m in MEMBERS], axis=0))}
    table = {}
    for n in names:
        table[n] = {"case_dsc": {"mean": float(np.mean(dsc[n])), "sd": float(np.std(dsc[n], ddof=1)),
                                 "min": float(np.min(dsc[n]))},
                    "case_slice_dsc_mean": float(np.mean(sdsc[n])),
                    "slice_dsc": pooled_slice_dsc(rows[n])}
    comparisons = {}
    for metric, values, mean in (("case DSC", dsc, member_mean["dsc"]),
                                 ("per-slice DSC (case mean)", sdsc, member_mean["slice"])):
        comparisons[f"{metric}: ensemble - mean of members"] = _interval(values["ensemble"], mean)
        for m in MEMBERS:
            comparisons[f"{metric}: ensemble - {m}"] = _interval(values["ensemble"], values[m])
        comparisons[f"{metric}: ensemble+flip - ensemble"] = _interval(values["ensemble_flip"],
                                                                       values["ensemble"])
    keep = holm([c["p_verdict"] for c in comparisons.values()])
    for c, k in zip(comparisons.values(), keep):
        c["holm_significant"] = bool(k)
    review = {}
    for n in ("ensemble", "ensemble_flip"):
        agreement = {c: rows[n][c]["mean_pairwise_dice"] for c in cases}
        own = {c: rows[n][c]["dsc"] for c in cases}
        review[n] = {"views": rows[n][cases[0]]["views"],
                     "flag": flag_scores(agreement, worst_cases(own), args.review_below),
                     "spearman_agreement_dsc": spearman([agreement[c] for c in cases],
                                                        [own[c] for c in cases])}
    result = {"set": "test", "labels": os.path.abspath(args.labels), "n_cases": len(cases),
              "review_below": args.review_below, "table": table, "comparisons": comparisons,
              "review": review,
              "cases": {c: {n: {k: v for k, v in rows[n][c].items() if k != "slices"}
                            for n in names} for c in cases}}
    if args.plot:
        plot(rows, cases, args.review_below, args.plot)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(markdown(result))
    return result


def plot(rows: dict, cases: list, threshold: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
    for ax, (name, title) in zip(axes, (("ensemble", "4 fold models (4 views)"),
                                        ("ensemble_flip", "4 fold models + flip (8 views)"))):
        agreement = np.array([rows[name][c]["mean_pairwise_dice"] for c in cases])
        own = {c: rows[name][c]["dsc"] for c in cases}
        worst = set(worst_cases(own))
        d = np.array([own[c] for c in cases])
        bad = np.array([c in worst for c in cases])
        ax.scatter(agreement[~bad], d[~bad], s=14, c="tab:blue", label="other cases")
        ax.scatter(agreement[bad], d[bad], s=22, c="tab:red", marker="s",
                   label="10 % lowest DSC")
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"review below {threshold:g}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("mean pairwise Dice of the views", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("per-case DSC of the ensemble", fontsize=8)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout(pad=0.4)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def markdown(result: dict) -> str:
    labels = {**{m: f"fold {m[-1]} model alone" for m in MEMBERS},
              "ensemble": "ensemble of the 4", "ensemble_flip": "ensemble of the 4, --tta flip"}
    out = [f"Test set: {result['n_cases']} new synthetic patients.", "",
           "| model | per-case DSC (%) mean ± sd | lowest case | per-slice DSC (%) | "
           "slices with a target | empty slices with a prediction |",
           "|---|---|---|---|---|---|"]
    for n, t in result["table"].items():
        s = t["slice_dsc"]
        out.append(f"| {labels[n]} | {_pct(t['case_dsc']['mean'])} ± {_pct(t['case_dsc']['sd'])} "
                   f"| {_pct(t['case_dsc']['min'])} | {_pct(s['mean'])} ± {_pct(s['sd'])} | "
                   f"{s['n_slices']} | {s['fp_empty_slices']} of {s['empty_slices']} |")
    out += ["", "| paired difference over cases (points) | mean | 95 % interval | verdict | "
            "Holm |", "|---|---|---|---|---|"]
    for name, c in result["comparisons"].items():
        out.append(f"| {name} | {c['mean']:+.2f} | [{c['low']:+.2f}, {c['high']:+.2f}] | "
                   f"{c['verdict']} | {'yes' if c['holm_significant'] else 'no'} |")
    out += ["", f"Review flag at `--review-below {result['review_below']:g}`:", "",
            "| configuration | views | flagged | of them among the 10 % lowest | "
            "of the 10 % lowest flagged | Spearman ρ (agreement, DSC) |", "|---|---|---|---|---|---|"]
    for n, r in result["review"].items():
        f, s = r["flag"], r["spearman_agreement_dsc"]
        out.append(f"| {labels[n]} | {r['views']} | {f['n_flagged']} | "
                   f"{len(f['flagged_among_worst'])} of {f['n_flagged']} | "
                   f"{len(f['flagged_among_worst'])} of {f['n_worst']} | "
                   f"{s['rho']:+.2f} (p = {s['p']:.2g}) |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("tune", "test"):
        p = sub.add_parser(name)
        p.add_argument("--preds", required=True)
        p.add_argument("--labels", required=True)
        p.add_argument("--out", required=True)
        if name == "test":
            p.add_argument("--review-below", type=float, required=True)
            p.add_argument("--markdown")
            p.add_argument("--plot")
    args = parser.parse_args(argv)
    result = tune(args) if args.command == "tune" else test(args)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    if args.command == "tune":
        for n, c in result["configurations"].items():
            ch = c["chosen"]
            print(f"{n}: threshold {ch['threshold']} flags {ch['n_flagged']}, "
                  f"{len(ch['flagged_among_worst'])} of the {ch['n_worst']} worst, F1 {ch['f1']:.3f}")
    else:
        print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
