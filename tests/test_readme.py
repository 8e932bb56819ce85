"""The README is a front page that works: its Python snippet runs as written, every relative link
of the README and the guides in docs/ names a file that exists (and a heading that exists, where
it names one), and it stays short.

The snippet test runs the README's ```python blocks in a fresh interpreter whose working folder
is a temporary folder holding only a link to the repository's `configs/` and a small NIfTI
volume `case.nii.gz`, the file the snippet predicts: everything the snippet writes (the
synthetic data's cache, the run folder, the SavedModel, the mask) lands in that folder, never in
the repository. The snippet trains for one epoch on a small synthetic set with a narrow model,
evaluates, exports and predicts: about 90 s of CPU time on the 2-core machine, nearly all of it
TensorFlow's import and the tracing of the training, evaluation and serving functions (a smaller
model or fewer steps change little); its wall time grows when other jobs share the cores.
"""
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 260


def markdown_files():
    """README.md and every Markdown file under docs/ (the guides, the results, the benchmarks)."""
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(text):
    """The bodies of the ```python fenced blocks of a Markdown text."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters, digits, spaces,
    hyphens and underscores kept), spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path):
    """The anchors of a Markdown file's headings (code blocks skipped; a repeated heading gets
    -1, -2, ... as on GitHub)."""
    seen, out, fence = {}, set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        if fence:
            continue
        match = re.match(r"^#{1,6} (.+)$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path):
    """``(line number, target)`` of every relative Markdown link or image outside code blocks."""
    links, fence = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            fence = not fence
        if fence:
            continue
        line = re.sub(r"`[^`]*`", "", line)         # inline code is not a link
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto:
                links.append((number, target))
    return links


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines; the front page keeps to {MAX_README_LINES}: move "
        f"the details into a guide in docs/")
    text = "\n".join(lines)
    # CI (.ci/run) and a fresh clone run exactly these two commands
    assert "make train" in text and "make test" in text


def test_every_relative_link_resolves():
    broken = []
    for path in markdown_files():
        for number, target in relative_links(path):
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where} (no heading with that anchor in {dest.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_checker_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) `[code](nowhere.md)`\n"
                    "```\n[in a block](nowhere.md)\n```\n[web](https://example.org)\n")
    assert relative_links(page) == [(3, "#title"), (3, "missing.md")]
    assert anchors(page) == {"title"}
    assert slug("Running a `.tflite` file without TensorFlow (LiteRT)") == \
        "running-a-tflite-file-without-tensorflow-litert"
    assert slug("Failure behaviour: bad input, cases and models") == \
        "failure-behaviour-bad-input-cases-and-models"


def write_case(path):
    """A small NIfTI CT volume (3 slices of 64 x 64, a bright disc in soft tissue)."""
    import nibabel as nib
    import numpy as np

    hu = np.full((64, 64, 3), 40.0, np.float32)
    y, x = np.ogrid[:64, :64]
    hu[((x - 30) ** 2 + (y - 34) ** 2) < 64] = 100.0
    nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))


@pytest.mark.slow
def test_readme_python_snippet_runs_as_written(tmp_path):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python snippet"
    work = tmp_path / "work"
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    write_case(work / "case.nii.gz")
    script = work / "readme_snippet.py"
    script.write_text("\n\n".join(textwrap.dedent(block) for block in blocks), encoding="utf-8")
    # what the snippet writes, relative to its working folder (the repository's own copies, if
    # someone ran the snippet there, must not change)
    outputs = ["runs/quick", "saved_models/quick/1/saved_model.pb", "mask.nii.gz"]
    before = {name: _stamp(ROOT / name) for name in outputs}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script)], cwd=work, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for name in outputs:
        assert (work / name).exists(), name
        assert _stamp(ROOT / name) == before[name], f"the snippet wrote {name} into the repository"


def _stamp(path):
    """Whether `path` exists, and when it last changed."""
    return path.stat().st_mtime_ns if path.exists() else None
