"""The review page of many cases (``OUT/review.html``, `lsnet_tf.inference.review`, issue 31).

Known answers from two stand-in members whose masks are thresholds of the input (``hu > 0`` and
``hu > 75``): on a case with a 4 x 4 square of 100 HU on every slice (both members: target) and
``d_k`` voxels of 50 HU on slice k (only the first), the pairwise Dice is
``2 * 16 n / (32 n + sum d)``, the disagreement of a slice sums to ``0.5 d_k`` (the standard
deviation of {1, 0}), and the thumbnails show the slices of largest ``d_k``. They run through
the command itself (``python -m lsnet_tf.predict --model A --model B --input LIST``) with the
model loading replaced, so no TensorFlow is needed. The page is read with Python's HTML parser
and rendered in headless Chromium (Debian's ``chromium`` package; ``make test`` installs it as
root), which must show every case's row and every image.
"""
import base64
import html
import html.parser
import io
import json
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from PIL import Image

from lsnet_tf import predict
from lsnet_tf.inference import ensemble, predictors, review

N, SIZE = 5, 24
HOSTILE = "a&b <img src=x onerror=alert(1)> 'q\""
# disputed voxels (50 HU: only the first member's target) per slice, by case
DISPUTED = {"calm": [0] * N, "mild": [0, 4, 0, 2, 0], HOSTILE: [10, 30, 20, 40, 0],
            "worst": [60] * N}


class Threshold:
    """A stand-in model: probability 1 where ``hu > t``; no boxes."""

    format, window, batch_size = "fake", (40.0, 400.0), 8

    def __init__(self, t):
        self.t, self.path, self.fingerprint = t, f"/models/above_{t:g}", f"sha-{t:g}"

    def predict(self, hu):
        n = hu.shape[0]
        probability = (hu > self.t).astype(np.float32)[..., None]
        return {"probability": probability, "mask": (probability > 0.5).astype(np.uint8),
                "boxes": np.zeros((n, 1, 4), np.float32), "scores": np.zeros((n, 1), np.float32),
                "keypoints": np.zeros((n, 1, 2), np.float32), "valid": np.zeros((n, 1), np.int32)}


def volume(disputed, extra=None):
    """(N, 24, 24) HU: -500, a 4 x 4 square of 100 HU on every slice (plus `extra[k]` voxels
    of 100 HU), `disputed[k]` voxels of 50 HU from row 10 on."""
    hu = np.full((len(disputed), SIZE, SIZE), -500.0, np.float32)
    for k, d in enumerate(disputed):
        hu[k, 2:6, 2:6] = 100.0
        hu[k, 10:].flat[:d] = 50.0
        if extra:
            hu[k, 7:9].flat[:extra[k]] = 100.0
    return hu


def hand_dice(disputed):
    return 2 * 16 * len(disputed) / (32 * len(disputed) + sum(disputed))


@pytest.fixture
def two_members(monkeypatch):
    """``--model A --model B``: the two thresholds, loaded without TensorFlow."""
    members = {"A": Threshold(0.0), "B": Threshold(75.0)}
    monkeypatch.setattr(predictors, "resolve_models", lambda paths, *a, **k: list(paths))
    monkeypatch.setattr(predictors, "member_fingerprints", lambda m: [f"sha-{p}" for p in m])
    monkeypatch.setattr(predictors, "load_ensemble", lambda paths, batch_size, **k:
                        ensemble.EnsemblePredictor([(p, members[p]) for p in paths],
                                               fingerprint=k["model_sha256"]))
    return ["--model", "A", "--model", "B", "--review-below", "0.8"]  # not the default


def write_cases(folder, volumes, extra=()):
    """``.npy`` cases and a list file naming them (and `extra` lines)."""
    folder.mkdir(exist_ok=True)
    for name, hu in volumes.items():
        np.save(folder / f"{name}.npy", hu)
    (folder / "cases.txt").write_text("\n".join([f"{n}.npy" for n in volumes] + list(extra))
                                      + "\n", encoding="utf-8")
    return str(folder / "cases.txt")


class Page(html.parser.HTMLParser):
    """The case rows of a review page: attributes, and per figure its slice and images."""

    def __init__(self, text):
        super().__init__()
        self.rows, self.images = [], 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "case" in attrs.get("class", "").split():
            self.rows.append({**{k[5:]: v for k, v in attrs.items() if k.startswith("data-")},
                              "figures": []})
        elif tag == "figure":
            self.rows[-1]["figures"].append({"slice": int(attrs["data-slice"]), "images": {}})
        elif tag == "img":
            self.images += 1
            self.rows[-1]["figures"][-1]["images"][attrs["class"]] = attrs["src"]


def read_page(out):
    text = (out / "review.html").read_text(encoding="utf-8")
    return text, Page(text)


def png(uri):
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_the_page_lists_every_case_once_by_agreement_with_the_flags_and_thumbnails(
        tmp_path, two_members, capsys):
    listed = write_cases(tmp_path / "in", {n: volume(d) for n, d in DISPUTED.items()},
                         extra=["missing.npy", "review.html.npy"])
    np.save(tmp_path / "in" / "review.html.npy", volume([0] * N))  # a name the batch writes
    out = tmp_path / "out"
    assert predict.main(two_members + ["--input", listed, "--out", str(out),
                                       "--no-overlays"]) == 1  # two cases failed
    text, page = read_page(out)
    by_dice = sorted(DISPUTED, key=lambda n: hand_dice(DISPUTED[n]))
    assert [r["case"] for r in page.rows] == ["missing", "review.html"] + by_dice
    assert by_dice == ["worst", HOSTILE, "mild", "calm"]
    for row in page.rows[:2]:
        assert row["status"] == "failed" and row["figures"] == [] and row["dice"] == ""
    assert "the name of a file the batch writes" in text and (out / "review.html").is_file()
    for row in page.rows[2:]:
        name, disputed = row["case"], DISPUTED[row["case"]]
        summary = read_json(out / name / "summary.json")
        assert float(row["dice"]) == summary["mean_pairwise_dice"] == pytest.approx(
            hand_dice(disputed), abs=1e-15)
        assert row["review"] == str(summary["review"]) == str(hand_dice(disputed) < 0.8)
        # Thumbnails: the slices of most disagreement (0.5 per disputed voxel), largest first;
        # none disputed: the slices of largest mask area (all 16 voxels: the first three).
        ranked = sorted((k for k in range(N) if disputed[k]), key=lambda k: (-disputed[k], k))
        want = ranked[:3] or [0, 1, 2]
        assert [f["slice"] for f in row["figures"]] == want
        assert [e["disagreement"] for e in summary["review_slices"]] == [
            0.5 * disputed[k] for k in want]
        for figure in row["figures"]:
            k = figure["slice"]
            images = {p: np.asarray(png(u)) for p, u in figure["images"].items()}
            assert set(images) == {"image", "mask", "disagreement"}
            assert all(a.shape == (96, 96) for a in images.values())  # 24 px, 4 x nearest
            assert np.count_nonzero(images["mask"] >= 128) == 16 * 16  # the square, tinted
            assert np.count_nonzero(images["disagreement"] == 255) == disputed[k] * 16
            assert np.count_nonzero(images["disagreement"]) == disputed[k] * 16
            assert png(figure["images"]["mask"]).mode == "P"
    assert page.images == 3 * (3 + 2 + 3 + 3)  # calm, mild (two slices disagree), hostile, worst
    # The hostile name is text: no tag of it survives, and its link is quoted.
    assert "<img src=x" not in text and "a&amp;b &lt;img src=x onerror=alert(1)&gt;" in text
    assert 'href="a%26b%20%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E%20%27q%22/summary.json"' \
        in text
    assert "<script" not in text and "http" not in text.replace("http-equiv", "")


def test_a_resumed_run_writes_the_whole_page_and_flags_against_its_threshold(
        tmp_path, two_members):
    volumes = {n: volume(d) for n, d in DISPUTED.items()}
    whole = tmp_path / "whole"
    argv = two_members + ["--no-overlays", "--input"]
    assert predict.main(argv + [write_cases(tmp_path / "all", volumes), "--out",
                                str(whole)]) == 0
    # A first run of two cases (as if killed after them), then the whole list again.
    out = tmp_path / "out"
    listed = write_cases(tmp_path / "in", volumes)
    with open(listed, "w", encoding="utf-8") as f:
        f.write("calm.npy\nworst.npy\n")
    assert predict.main(argv + [listed, "--out", str(out)]) == 0
    assert [r["case"] for r in read_page(out)[1].rows] == ["worst", "calm"]
    resumed = write_cases(tmp_path / "in", volumes)
    assert predict.main(argv + [resumed, "--out", str(out)]) == 0
    statuses = {r["case"]: r["status"] for r in read_json(out / "cases.json")}
    assert statuses == {"calm": "skipped", "worst": "skipped", "mild": "done", HOSTILE: "done"}
    page, reference = read_page(out)[1].rows, read_page(whole)[1].rows
    assert [r["case"] for r in page] == ["worst", HOSTILE, "mild", "calm"]
    for row, ref in zip(page, reference):  # the same page as the run in one go, but the status
        assert {k: v for k, v in row.items() if k != "status"} == {
            k: v for k, v in ref.items() if k != "status"}
    assert sum(len(f["images"]) for r in page for f in r["figures"]) == 3 * 11
    # Again with another threshold: every case skipped, flagged against it (cases.csv too),
    # while each summary.json keeps the flag it was written with.
    assert predict.main(argv + [str(resumed), "--out", str(out), "--review-below", "0.99"]) == 0
    rows = read_page(out)[1].rows
    assert {r["case"]: r["review"] for r in rows} == {
        "worst": "True", HOSTILE: "True", "mild": "True", "calm": "False"}
    assert {r["case"]: r["status"] for r in rows} == dict.fromkeys(DISPUTED, "skipped")
    assert read_json(out / "mild" / "summary.json")["review"] is False
    assert "below 0.99" in (out / "review.html").read_text(encoding="utf-8")


def test_one_model_gives_a_page_by_name_without_agreement(tmp_path, monkeypatch):
    monkeypatch.setattr(predictors, "load_predictor", lambda *a, **k: Threshold(75.0))
    listed = write_cases(tmp_path / "in", {"b_empty": np.full((N, SIZE, SIZE), -500.0),
                                           "a_grows": volume([0] * N, extra=[0, 5, 0, 9, 3])})
    out = tmp_path / "out"
    assert predict.main(["--model", "one", "--input", listed, "--out", str(out)]) == 0
    text, page = read_page(out)
    assert "Agreement is not available" in text
    assert [r["case"] for r in page.rows] == ["a_grows", "b_empty"]
    assert all(r["dice"] == "" and r["review"] == "" for r in page.rows)
    # the slices of largest mask area (16 + extra); an empty mask: the middle slice
    assert [f["slice"] for f in page.rows[0]["figures"]] == [3, 1, 4]
    assert [f["slice"] for f in page.rows[1]["figures"]] == [N // 2]
    assert all(set(f["images"]) == {"image", "mask"} for r in page.rows for f in r["figures"])
    summary = read_json(out / "a_grows" / "summary.json")
    assert [e["mask_voxels"] for e in summary["review_slices"]] == [25, 21, 19]
    assert all(e["disagreement"] is None for e in summary["review_slices"])


def test_a_single_case_gets_no_page(tmp_path, monkeypatch):
    monkeypatch.setattr(predictors, "load_predictor", lambda *a, **k: Threshold(75.0))
    np.save(tmp_path / "ct.npy", volume([0] * N))
    assert predict.main(["--model", "one", "--input", str(tmp_path / "ct.npy"), "--out",
                         str(tmp_path / "out")]) == 0
    assert not (tmp_path / "out" / "review.html").exists()
    assert "review_slices" not in read_json(tmp_path / "out" / "summary.json")


def test_slice_ranking_keeps_the_k_largest_with_ties_to_the_lower_index():
    ranking = review.SliceRanking(k=2)
    maps = np.zeros((6, 2, 2), np.float32)
    maps[1, 0, 0] = maps[2, 0, 0] = 0.25  # a tie: slice 1 before slice 2
    maps[4] = 0.5                          # 2.0
    ranking.add(0, maps[:3])
    ranking.add(3, maps[3:])
    assert [(k, s) for k, s, _ in ranking.slices()] == [(4, 2.0), (1, 0.25)]
    np.testing.assert_array_equal(ranking.slices()[0][2], maps[4])


# ------------------------------------------------------------------ in a browser
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
# Appended to a copy of the page: once loaded, the page's rows and images as the browser has
# them, as JSON in a <pre id="rendered">.
PROBE = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  const result = {rows: [...document.querySelectorAll("tr.case")].map(r => r.dataset.case),
                  images: images.length,
                  broken: images.filter(i => !i.complete || i.naturalWidth === 0).length,
                  widths: [...new Set(images.map(i => i.naturalWidth))]};
  const pre = document.createElement("pre");
  pre.id = "rendered";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});</script>"""


def chromium():
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: this test renders the review page in headless "
                    "Chromium (Debian: apt-get install chromium; `make test` installs it when "
                    "run as root)")
    return path


def render(page_path, tmp_path):
    """What headless Chromium shows of the page: `PROBE`'s JSON."""
    probed = tmp_path / "probed.html"
    probed.write_text(page_path.read_text(encoding="utf-8").replace("</body>", PROBE
                                                                   + "</body>"),
                      encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               "--virtual-time-budget=5000", "--dump-dom",
                               probed.as_uri()], capture_output=True, text=True, timeout=90)
    found = re.search(r'<pre id="rendered">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.slow
def test_chromium_renders_every_case_and_every_image(tmp_path, two_members):
    listed = write_cases(tmp_path / "in", {n: volume(d) for n, d in DISPUTED.items()},
                         extra=["missing.npy"])
    out = tmp_path / "out"
    assert predict.main(two_members + ["--input", listed, "--out", str(out),
                                       "--no-overlays"]) == 1
    rendered = render(out / "review.html", tmp_path)
    assert rendered["rows"] == ["missing", "worst", HOSTILE, "mild", "calm"]
    assert rendered["images"] == 3 * 11 and rendered["broken"] == 0
    assert rendered["widths"] == [96]


def test_a_case_without_thumbnails_or_with_a_missing_or_outside_one_shows_no_image(tmp_path):
    """Summaries of cases written before the page (no ``review_slices``), a thumbnail deleted
    and one named outside the case folder: the row says so, and nothing is embedded."""
    out = tmp_path / "out"
    for name, slices in (("old", None), ("broken", [{"slice": 1, "disagreement": 2.0, "images": {
            "image": "thumbnails/gone.png", "mask": "../secret.png",
            "disagreement": "/etc/hostname"}}])):
        (out / name).mkdir(parents=True)
        summary = {"views": 2, "tta": "none", "members": [], "mean_pairwise_dice": 0.5}
        if slices is not None:
            summary["review_slices"] = slices
        (out / name / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    Image.new("L", (2, 2)).save(out / "secret.png")  # a PNG, but not the case's
    rows = [{"case": n, "status": "skipped", "mean_pairwise_dice": d, "review": True}
            for n, d in (("old", 0.5), ("broken", 0.4))]
    assert review.write_page(str(out), rows, 0.8) == str(out / "review.html")
    text, page = read_page(out)
    assert [r["case"] for r in page.rows] == ["broken", "old"] and page.images == 0
    assert "no thumbnails (none recorded in summary.json)" in text
    for panel in ("image", "mask", "disagreement"):
        assert f'<span class="missing">{panel} missing</span>' in text
    assert "base64" not in text
