"""The review page of many cases: ``OUT/review.html``, one static file that any browser opens
(no server, no JavaScript, nothing fetched: the thumbnails are PNG data URIs, the style is
inline).

``python -m lsnet_tf.predict --input FOLDER --out OUT`` (a folder or list of cases,
`lsnet_tf.inference.batch.run_batch`) writes it when every case is done, from the summary rows
of the run and each case's ``summary.json`` and thumbnails, so that a resumed run (complete
cases skipped) writes the page of all its cases. A single case (``--input`` one volume) gets no
page.

The page
--------
One row per case of the run: its name (a link to its ``summary.json``), status, review flag,
mean and lowest pairwise Dice of the views, volume and the spread of the views' volumes
(`lsnet_tf.inference.ensemble`), and the thumbnails of its slices. Order: failed cases first
(they have no prediction; by name), then by ``mean_pairwise_dice``, lowest first (ties by
name), then the cases without agreement by name. The flag is the summary row's ``review``: this
run's ``--review-below``. With one model and no mirroring (one view) there is no agreement: the
page says so, and the cases come by name.

Thumbnails (`write_thumbnails`, written into the case folder by
`lsnet_tf.inference.cases.predict_case` while the volume is in memory, and listed in its
``summary.json`` as ``review_slices``): for an ensemble or ``--tta``, the `THUMBNAIL_SLICES`
slices whose summed disagreement (per pixel the standard deviation of the views' probabilities,
as in ``disagreement.nii.gz``) is largest, each as three `THUMBNAIL_PX`-pixel PNGs: the image
(the model's HU window), the mask tinted green on it, and the disagreement (black 0 to white
0.5); a case whose views agree everywhere shows its slices of largest mask area instead (the
middle slice when the mask is empty). With one view: the slices of largest mask area, image and
mask. `SliceRanking` keeps the best slices' maps while the volume is predicted (a few slices, not
the volume's map).

Case names and every text from the summaries are HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import json
import os
import urllib.parse

import numpy as np

from lsnet_tf.inference.many import case_path
from lsnet_tf.utils.drawing import display_window
from lsnet_tf.utils.files import write_text, writing

__all__ = ["PAGE", "THUMBNAIL_SLICES", "THUMBNAIL_PX", "THUMBNAIL_FOLDER", "SliceRanking",
           "write_thumbnails", "write_page", "remove_page"]

PAGE = "review.html"
THUMBNAIL_SLICES = 3
THUMBNAIL_PX = 96          # the longer side of a thumbnail
THUMBNAIL_FOLDER = "thumbnails"
PANELS = ("image", "mask", "disagreement")
MAX_DISAGREEMENT = 0.5     # the standard deviation of probabilities in [0, 1] is at most 0.5
TINT, TINT_ALPHA = (0.1, 1.0, 0.1), 0.5   # the mask's green, as on the overlays


class SliceRanking:
    """The `k` slices of largest summed disagreement, fed batch by batch (`add`); only their
    maps are kept. Ties go to the lower slice index; slices without disagreement are left out."""

    def __init__(self, k: int = THUMBNAIL_SLICES):
        self.k = int(k)
        self._best = {}  # index -> (score, map)

    def add(self, start: int, maps) -> None:
        """`maps`: ``(n, H, W)`` disagreement of slices ``start .. start + n - 1``."""
        maps = np.asarray(maps)
        scores = maps.reshape(maps.shape[0], -1).sum(1, dtype=np.float64)
        for i in np.flatnonzero(scores > 0):
            self._best[start + int(i)] = (float(scores[i]), np.array(maps[i], np.float32))
            if len(self._best) > self.k:
                worst = min(self._best, key=lambda j: (self._best[j][0], -j))
                del self._best[worst]

    def slices(self) -> list:
        """``[(index, score, map), ...]``, the largest score first."""
        order = sorted(self._best, key=lambda j: (-self._best[j][0], j))
        return [(j, *self._best[j]) for j in order]


# ----------------------------------------------------------------------------------- thumbnails
def _palettes() -> dict:
    """The 256-colour palettes of the thumbnails: ``mask``: 128 grays, then the same grays
    tinted green as the overlays are (`lsnet_tf.utils.drawing.overlay`); ``disagreement``:
    black, red, yellow, white."""
    gray = np.linspace(0.0, 1.0, 128)[:, None] * np.ones(3)
    tinted = (1 - TINT_ALPHA) * gray + TINT_ALPHA * np.asarray(TINT)
    x = np.linspace(0.0, 1.0, 256)[:, None] * 3.0
    hot = np.clip(x - np.array([0.0, 1.0, 2.0]), 0.0, 1.0)
    as_bytes = lambda colours: (colours * 255).round().astype(np.uint8).ravel().tolist()
    return {"mask": as_bytes(np.concatenate([gray, tinted])), "disagreement": as_bytes(hot)}


def _resize(values) -> np.ndarray:
    """A 2-D float array scaled so that its longer side is `THUMBNAIL_PX` (box filter down,
    nearest neighbour up)."""
    from PIL import Image

    image = Image.fromarray(np.asarray(values, np.float32), mode="F")
    w, h = image.size
    scale = THUMBNAIL_PX / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.NEAREST
    return np.asarray(image.resize(size, resample))


def _save(path: str, indices: np.ndarray, palette=None) -> None:
    """A gray (`palette` None) or palette PNG of uint8 `indices`."""
    from PIL import Image

    image = Image.fromarray(indices.astype(np.uint8), mode="L")
    if palette is not None:
        image = image.convert("P")
        image.putpalette(palette)
    image.save(path, optimize=True)


def _panels(image, mask, disagreement) -> dict:
    """Each panel's (indices, palette): the image (gray), the mask tinted on it (128 grays, 128
    tinted), the disagreement (`MAX_DISAGREEMENT` white); `disagreement` None: no panel."""
    palettes = _palettes()
    gray = _resize(image)
    out = {"image": ((gray * 255).round(), None),
           "mask": ((gray * 127).round() + 128 * (_resize(mask) >= 0.5), palettes["mask"])}
    if disagreement is not None:
        level = np.clip(_resize(disagreement) / MAX_DISAGREEMENT, 0.0, 1.0)
        out["disagreement"] = ((level * 255).round(), palettes["disagreement"])
    return out


def write_thumbnails(out_dir: str, hu, mask, window, ranking: SliceRanking | None = None) -> list:
    """Write the thumbnails of a case (module docstring) into ``out_dir/thumbnails/``; returns
    ``review_slices``: ``[{"slice": k, "disagreement": summed or None, "mask_voxels": n,
    "images": {panel: path relative to out_dir}}, ...]``. `hu`, `mask`: ``(slices, H, W)``
    canonical HU and label map; `ranking`: the views' `SliceRanking` (None: one view)."""
    mask = np.asarray(mask)
    flat, area = mask.reshape(mask.shape[0], -1), np.zeros(mask.shape[0], np.int64)
    for k in np.flatnonzero(flat.any(axis=1)):  # slice by slice: 10x faster than with an axis
        area[k] = np.count_nonzero(flat[k])
    chosen = [(k, score, m) for k, score, m in ranking.slices()] if ranking is not None else []
    if not chosen:
        by_area = [int(k) for k in np.argsort(-area, kind="stable")[:THUMBNAIL_SLICES]
                   if area[k] > 0] or [mask.shape[0] // 2]
        chosen = [(k, 0.0 if ranking is not None else None, None) for k in by_area]
    folder = os.path.join(out_dir, THUMBNAIL_FOLDER)
    with writing("the thumbnails folder", folder):
        os.makedirs(folder, exist_ok=True)
    entries = []
    for k, score, disagreement in chosen:
        if ranking is not None and disagreement is None:
            disagreement = np.zeros(mask.shape[1:], np.float32)  # the views agree everywhere
        images = {}
        image = display_window(np.asarray(hu[k], np.float32), window)
        for panel, (indices, palette) in _panels(image, mask[k] > 0, disagreement).items():
            name = f"{THUMBNAIL_FOLDER}/slice_{k:04d}_{panel}.png"
            with writing("a thumbnail", os.path.join(out_dir, name)):
                _save(os.path.join(out_dir, *name.split("/")), indices, palette)
            images[panel] = name
        entries.append({"slice": int(k), "disagreement": None if score is None else float(score),
                        "mask_voxels": int(area[k]), "images": images})
    return entries


# ----------------------------------------------------------------------------------- the page
def _text(value) -> str:
    """Any value as escaped HTML text (file names that are not UTF-8 included)."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(text, quote=True)


def _number(value, digits: int) -> str:
    return "&ndash;" if value is None or value == "" else f"{float(value):.{digits}f}"


def _read_summary(out_dir: str, name: str):
    try:
        with open(os.path.join(case_path(out_dir, name), "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _data_uri(folder: str, relative) -> str | None:
    """The PNG `relative` (below `folder` only) as a data URI; None when missing or no PNG."""
    if not isinstance(relative, str) or os.path.isabs(relative):
        return None
    path = os.path.realpath(os.path.join(folder, *relative.split("/")))
    if not path.startswith(os.path.realpath(folder) + os.sep):
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _thumbnails(out_dir: str, name: str, summary) -> str:
    slices = summary.get("review_slices") if summary else None
    if not isinstance(slices, list) or not slices:
        return '<span class="none">no thumbnails (none recorded in summary.json)</span>'
    folder = case_path(out_dir, name)
    parts = []
    for entry in slices:
        if not isinstance(entry, dict):
            continue
        k, score = entry.get("slice"), entry.get("disagreement")
        caption = f"slice {_text(k)}"
        if isinstance(score, (int, float)):
            caption += f" &middot; &Sigma; sd {score:.1f}"
        images = entry.get("images") if isinstance(entry.get("images"), dict) else {}
        cells = []
        for panel in PANELS:
            if panel not in images:
                continue
            uri = _data_uri(folder, images[panel])
            alt = _text(f"{name}: slice {k}, {panel}")
            cells.append(f'<img class="{panel}" src="{uri}" alt="{alt}" title="{panel}">'
                         if uri else f'<span class="missing">{panel} missing</span>')
        parts.append(f'<figure data-slice="{_text(k)}">{"".join(cells)}'
                     f"<figcaption>{caption}</figcaption></figure>")
    return "".join(parts)


def _order(item):
    row = item[0]
    dice = row.get("mean_pairwise_dice")
    if row.get("status") == "failed":
        return (0, 0.0, row["case"])
    if dice is not None and dice != "":
        return (1, float(dice), row["case"])
    return (2, 0.0, row["case"])


def _row_html(rank: int, out_dir: str, row: dict, summary) -> str:
    name, status = row["case"], row.get("status")
    review, dice = row.get("review"), row.get("mean_pairwise_dice")
    if status == "failed":
        flag, css = "failed", "failed"
    elif review is None or review == "":
        flag, css = "&ndash;", "none"
    else:
        flag, css = ("REVIEW", "review") if review in (True, "True") else ("ok", "ok")
    link = urllib.parse.quote(name.encode("utf-8", "surrogateescape")) + "/summary.json"
    title = (f'<a href="{_text(link)}">{_text(name)}</a>' if status != "failed"
             else _text(name))
    detail = (f'<div class="error">{_text(row.get("error") or "")}</div>' if status == "failed"
              else "")
    least = summary.get("min_pairwise_dice") if summary else None
    thumbs = "" if status == "failed" else _thumbnails(out_dir, name, summary)
    data = (f'data-case="{_text(name)}" data-status="{_text(status)}" '
            f'data-review="{_text("" if review is None else review)}" '
            f'data-dice="{_text("" if dice is None else repr(float(dice)))}"')
    return (f'<tr class="case {css}" {data}><td class="rank">{rank}</td>'
            f'<td class="name">{title}<div class="status">{_text(status)}</div>{detail}</td>'
            f'<td class="flag"><span>{flag}</span></td>'
            f'<td class="dice">{_number(dice, 4)}<div>lowest {_number(least, 4)}</div></td>'
            f'<td class="volume">{_number(row.get("volume_ml"), 3)}'
            f'<div>sd {_number(row.get("volume_sd_ml"), 3)}, '
            f'range {_number(row.get("volume_range_ml"), 3)}</div></td>'
            f'<td class="thumbs">{thumbs}</td></tr>')


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #111; }
h1 { font-size: 20px; margin: 0 0 6px; }
p { margin: 4px 0; max-width: 70em; }
table { border-collapse: collapse; margin-top: 10px; }
th, td { border-bottom: 1px solid #ccc; padding: 4px 6px; text-align: right;
         vertical-align: top; }
th { background: #eee; position: sticky; top: 0; }
td.name, th.name, td.thumbs, th.thumbs { text-align: left; }
td.name { min-width: 7em; max-width: 18em; overflow-wrap: break-word; }
td.dice, td.volume { white-space: nowrap; }
.status, .error, td div, th div { font-size: 12px; color: #555; font-weight: normal; }
.error { color: #a00; }
td.flag span { padding: 1px 5px; border-radius: 3px; }
tr.review td.flag span { color: #fff; background: #c22; font-weight: bold; }
tr.failed td.flag span { color: #fff; background: #555; }
tr.ok td.flag span { color: #060; }
figure { display: inline-block; margin: 0 10px 4px 0; }
figure img { display: inline-block; margin-right: 2px; image-rendering: pixelated; }
figcaption { font-size: 12px; color: #444; }
.none, .missing { color: #a00; font-size: 12px; }
"""


def _header(out_dir: str, rows, summaries, review_below) -> str:
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("done", "skipped", "failed")}
    flagged = sum(r.get("review") in (True, "True") for r in rows)
    first = next((s for s in summaries if s and s.get("views")), None)
    lines = [f"<h1>Cases to review: {_text(os.path.basename(os.path.abspath(out_dir)))}</h1>",
             f"<p>{len(rows)} cases: {counts['done']} predicted, {counts['skipped']} complete "
             f"from an earlier run, {counts['failed']} failed.</p>"]
    if first is None:
        lines.append("<p><b>Agreement is not available</b>: one model without --tta gives one "
                     "view, so there is nothing to compare; cases by name (failed first). "
                     "Thumbnails: the slices of largest mask area, the image and the mask "
                     "(green).</p>")
    else:
        members = first.get("members") or []
        if review_below is None:
            review_below = first.get("review_below")
        threshold = "" if review_below is None else f" below {float(review_below):g}"
        lines.append(
            f"<p>{_text(first.get('views'))} views: {len(members)} member(s), mirroring "
            f"{_text(first.get('tta'))}. <b>{flagged}</b> case(s) flagged for review (mean "
            f"pairwise Dice of the views{threshold}). Sorted by mean pairwise Dice, lowest first "
            "(failed cases first).</p>"
            f"<p>Thumbnails: the {THUMBNAIL_SLICES} slices where the views disagree most "
            "(&Sigma; sd: the per-pixel standard deviation of the views' probabilities, summed "
            "over the slice): the image, the mask (green) and the disagreement (black 0 to "
            "white 0.5).</p>")
        if members:
            lines.append("<details><summary>members</summary><ul>" + "".join(
                f"<li>{_text(m.get('model') if isinstance(m, dict) else m)}</li>"
                for m in members) + "</ul></details>")
    return "\n".join(lines)


def write_page(out_dir: str, rows, review_below: float | None = None) -> str:
    """Write ``out_dir/review.html`` (module docstring) atomically from the summary rows `rows`
    (`lsnet_tf.inference.batch`: one per case) and the case folders; returns its path.
    `review_below`: the threshold the rows' ``review`` was taken against (shown)."""
    items = sorted(((row, None if row.get("status") == "failed"
                     else _read_summary(out_dir, row["case"])) for row in rows), key=_order)
    body = "\n".join(_row_html(i + 1, out_dir, row, summary)
                     for i, (row, summary) in enumerate(items))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Cases to review: {_text(os.path.basename(os.path.abspath(out_dir)))}</title>"
        f"<style>{STYLE}</style></head><body>\n"
        f"{_header(out_dir, rows, [s for _, s in items], review_below)}\n"
        '<table><thead><tr><th>#</th><th class="name">case</th><th>review</th>'
        "<th>mean pairwise Dice<div>(lowest pair)</div></th><th>volume mL<div>(views' sd, "
        'range)</div></th><th class="thumbs">slices: image, mask, disagreement</th>'
        f"</tr></thead>\n<tbody>\n{body}\n</tbody></table>\n</body></html>\n")
    path = os.path.join(out_dir, PAGE)
    with writing("the review page", path):
        write_text(path, page)
    return path


def remove_page(out_dir: str) -> None:
    """Remove an earlier run's ``review.html`` (a run writes its own when its cases are done)."""
    path = os.path.join(out_dir, PAGE)
    with writing("the review page (removing the earlier one)", path):
        if os.path.isfile(path):
            os.remove(path)
