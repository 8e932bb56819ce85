"""The evaluate command's reports: Markdown tables of either mode, and the output file names.

Both modes write JSON and Markdown and print the Markdown. ``--out``: a ``.json`` file (the
Markdown goes beside it with ``.md``), an existing folder or one named with a trailing ``/``
(``evaluation.json`` and ``evaluation.md`` in it), or any other path as a prefix (``OUT.json``
and ``OUT.md``); ``--markdown`` names the Markdown file itself.
"""
from __future__ import annotations

import os


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _case(result) -> str:
    c = result["per_case"]
    if not c["n"]:
        return "–"
    return f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}"


def _millions(value) -> str:
    return "–" if value is None else f"{value / 1e6:.2f}"


def markdown(result: dict, label: str | None = None) -> str:
    """A Markdown table of one evaluation in the paper's format (Table 1's columns, then the
    first stage's mIoU, per-case DSC, parameters and FLOPs), and the size buckets."""
    label = label or result.get("architecture", "model")
    cx = result.get("complexity", {})
    params = cx.get("params", {}).get("total")
    flops = cx.get("flops", {}).get("total")
    lines = [
        f"Split `{result.get('split')}`, {result['n_slices']} slices "
        f"({result['n_target_slices']} with a target; empty slices {result['empty_slices']}d; "
        f"{result['fp_empty_slices']} of {result['n_empty_slices']} empty slices with a "
        "false positive).",
        "",
        "| Method | DSC(%) | Precision(%) | Recall(%) | box mIoU(%) | DSC per case(%) | "
        "Params(M) | GFLOPs |",
        "|---|---|---|---|---|---|---|---|",
        f"| {label} | {_pct(result['dsc']['mean'])} | {_pct(result['precision']['mean'])} | "
        f"{_pct(result['recall']['mean'])} | {_pct(result['box_miou'])} | {_case(result)} | "
        f"{_millions(params)} | {'–' if flops is None else f'{flops / 1e9:.2f}'} |",
        "",
        "| Target size | slices | DSC(%) |",
        "|---|---|---|",
    ]
    for bucket, v in result["dsc_by_size"].items():
        lines.append(f"| {bucket} | {v['n']} | {_pct(v['dsc'])} |")
    return "\n".join(lines) + "\n"


def _num(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mean_sd(stats: dict, scale: float = 1.0) -> str:
    if stats["mean"] is None:
        return "–"
    sd = "–" if stats["sd"] is None else f"{scale * stats['sd']:.2f}"
    return f"{scale * stats['mean']:.2f} ± {sd}"


def folder_markdown(result: dict, label: str | None = None) -> str:
    """A Markdown report of `evaluate_folder`: one line of context, a table with one row per case
    and a last row of mean ± sample standard deviation (HD95 over the cases where it is
    defined), and the unpaired and undefined cases."""
    values = result["label_values"]
    pred_values = result["prediction_values"]
    lines = [
        (f"{label}: " if label else "")
        + f"{result['n_cases']} cases; predictions `{result['predictions']}`, labels "
        f"`{result['labels']}`; target: label values "
        f"{'any non-zero' if values is None else values}, prediction values "
        f"{'any non-zero' if pred_values is None else pred_values}.",
        "",
        "| Case | DSC(%) | Precision(%) | Recall(%) | HD95(mm) | Pred(mL) | Label(mL) | "
        "Pred−Label(mL) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        lines.append(f"| {c['case']} | {_pct(c['dsc'])} | {_pct(c['precision'])} | "
                     f"{_pct(c['recall'])} | {_num(c['hd95_mm'])} | {_num(c['pred_ml'])} | "
                     f"{_num(c['label_ml'])} | {_num(c['volume_diff_ml'])} |")
    sm = result["summary"]
    lines.append(f"| mean ± sd (n={result['n_cases']}) | {_mean_sd(sm['dsc'], 100)} | "
                 f"{_mean_sd(sm['precision'], 100)} | {_mean_sd(sm['recall'], 100)} | "
                 f"{_mean_sd(sm['hd95_mm'])}"
                 + (f" (n={sm['hd95_mm']['n']})" if sm["hd95_mm"]["n"] != result["n_cases"]
                    else "")
                 + f" | {_mean_sd(sm['pred_ml'])} | {_mean_sd(sm['label_ml'])} | "
                 f"{_mean_sd(sm['volume_diff_ml'])} |")
    notes = []
    if result["hd95_undefined"]:
        notes.append("HD95 undefined (exactly one mask empty), left out of its mean: "
                     + ", ".join(result["hd95_undefined"]))
    if result["missing_predictions"]:
        notes.append("no prediction, scored as an empty mask: "
                     + ", ".join(result["missing_predictions"]))
    if result["unlabelled_predictions"]:
        notes.append("predictions without a label, not scored: "
                     + ", ".join(result["unlabelled_predictions"]))
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def output_paths(out: str, markdown_path: str | None = None) -> tuple[str, str]:
    """``(json, markdown)`` paths of ``--out`` (module docstring): a ``.json`` file, a folder
    (existing, or named with a trailing separator: ``evaluation.json`` in it) or a prefix."""
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        json_path = os.path.join(out, "evaluation.json")
    elif out.lower().endswith(".json"):
        json_path = out
    else:
        json_path = out + ".json"
    return json_path, markdown_path or os.path.splitext(json_path)[0] + ".md"
