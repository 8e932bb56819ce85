"""Many cases for ``python -m lsnet_tf.predict --model M --input FOLDER --out DIR``: finding
them in a folder or a list file, naming them, and where their outputs may go
(`lsnet_tf.inference.batch` runs them).

`lsnet_tf.predict` takes this path when ``--input`` is a folder of cases or a list file
(`is_batch_input`); the model is loaded once for all cases, and each case gets exactly the
outputs of a single prediction.

Which folder is what
--------------------
A folder with DICOM files directly in it (``*.dcm``, or files without an extension that start
as DICOM files do: ``DICM`` at byte 128; hidden files and ``DICOMDIR`` do not count) is one
series: the single-case DICOM input of ``python -m lsnet_tf.predict``, read with its subfolders
as before. Any other folder is a folder of cases, searched recursively (hidden files and
folders are left out; hidden NIfTI files, such as ``..dots.nii.gz``, are named in a warning):

- every NIfTI file (``.nii``, ``.nii.gz``) is a case, named by its file name without the
  extension and without a trailing ``_0000`` (the channel suffix of the Decathlon / nnU-Net
  ``imagesTs`` layout): ``imagesTs/liver_132_0000.nii.gz`` is case ``liver_132``;
- every folder with DICOM files directly in it is a case (one series; the folders under it
  belong to it), named by its path relative to the input folder with ``/`` replaced by ``__``:
  ``export/P001/CT`` in ``export`` is case ``P001__CT``.

Other files are left out (their number is logged). So a patient folder whose series lie in
subfolders is now a folder of cases (one per series), where it used to be read as one series.

A list file (``.txt`` or ``.lst``, UTF-8; a byte order mark is ignored) names one case per
line: any single-case input (`lsnet_tf.inference.readers`: NIfTI, DICOM folder, ``.npy``,
``.png``), relative to the list file's folder or absolute; blank lines and lines starting with
``#`` are ignored. Cases keep the list's order and are named as above (a ``.npy``/``.png``
file by its name without the extension; a DICOM folder outside the list's folder by its own
name). A line may be a URL (``gs://bucket/imagesTs/x_0000.nii.gz``, a DICOM folder in a bucket):
that case is read from the bucket (named by its own name). Buckets: a folder of cases may be a
``gs://`` URL, listed through `lsnet_tf.utils.files` (a DICOM file without an extension told by
its bytes 128 to 131 alone); a list file must be local.

Case names are checked once, in `check_case_names`: a name that is empty, ``.`` or ``..``,
holds a path separator, starts with ``.`` (hidden, and the batch's work folders), is one of the
batch's own files (`RESERVED_NAMES`: ``cases.csv``, ``cases.json``, ...) or is too long for a
folder name, and a name shared by several inputs (letter case aside), makes that case fail
alone (status ``failed``, the error naming its input file); the other cases run. Every path
the batch writes, renames or removes under ``OUT`` goes through `case_path`, which refuses
anything but a direct child of ``OUT`` (links resolved). A folder or list without cases is an
error before anything runs.

``--out`` must not be an existing file, the input folder or a folder inside it (nor inside a
listed DICOM folder): `check_out_dir` refuses these before the model loads, as its outputs
would be read as cases on the next run.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from lsnet_tf.utils import files, gcs
from lsnet_tf.data.names import case_name, is_nifti

__all__ = ["BatchError", "Case", "RESERVED_NAMES", "is_batch_input", "find_cases",
           "check_case_names", "check_out_dir", "case_path", "holds_dicom",
           "file_case_name", "folder_case_name", "name_problem"]

LIST_EXTENSIONS = (".txt", ".lst")
# Names under OUT that are the batch's own files (and their temporary names), never a case's
# folder; compared without regard to letter case (case-insensitive file systems).
RESERVED_NAMES = ("cases.csv", "cases.json", "cases.csv.tmp", "cases.json.tmp", "summary.json",
                  "review.html", "review.html.tmp")
# A case folder's name, and the work folders ``.<case>.partial``/``.<case>.old``, must fit in
# one path component (255 bytes on the common file systems).
MAX_NAME_BYTES = 255 - len("..partial")


class BatchError(ValueError):
    """Cases that cannot be run together (no cases, name collisions, foreign outputs)."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One case: its output folder name and its input path (absolute); `error` says why the
    case cannot run (an unsafe name, a name shared with other inputs), else None."""

    name: str
    input: str
    error: str | None = None


def _starts_as_dicom(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def holds_dicom(folder: str) -> bool:
    """Whether `folder` has DICOM files directly in it (see the module docstring)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return False
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name.upper() == "DICOMDIR" or not entry.is_file():
            continue
        ext = os.path.splitext(name)[1].lower()
        if ext == ".dcm" or (ext == "" and _starts_as_dicom(entry.path)):
            return True
    return False


def _url_starts_as_dicom(url: str) -> bool:
    try:
        head = gcs.read_bytes(url, 128, 131) if gcs.is_gcs(url) else files.read_bytes(url)[128:132]
    except OSError:  # shorter than 132 bytes (a range the service cannot serve), unreadable
        return False
    return head == b"DICM"


def _is_dicom_name(name: str, path: str) -> bool:
    if name.startswith(".") or name.upper() == "DICOMDIR":
        return False
    ext = os.path.splitext(name)[1].lower()
    return ext == ".dcm" or (ext == "" and _url_starts_as_dicom(path))


def _url_tree(url: str) -> dict:
    """``{folder: [file names directly in it]}`` of every folder under `url` that holds files
    (folders relative to `url`, ``""`` for `url` itself; hidden ones left out)."""
    tree: dict = {}
    for rel in files.walk_files(url):
        folder, _, name = rel.rpartition("/")
        if not any(p.startswith(".") for p in folder.split("/") if p):
            tree.setdefault(folder, []).append(name)
    return tree


def _url_holds_dicom(url: str, names) -> bool:
    return any(_is_dicom_name(n, files.join(url, n)) for n in sorted(names))


def _url_cases(url: str, log) -> list[Case]:
    """The cases of a folder of cases in a bucket (`lsnet_tf.utils.files`), found as
    `_folder_cases` finds them in a local folder; each case's input is its URL."""
    url = url.rstrip("/")
    tree = _url_tree(url)
    series = [f for f in sorted(tree) if f and _url_holds_dicom(files.join(url, f), tree[f])]
    cases, ignored, hidden = [], 0, []
    cases += [Case(folder_case_name(f), files.join(url, f)) for f in series]
    for folder, names in tree.items():
        if any(folder == s or folder.startswith(s + "/") for s in series):
            continue  # the folders under a series belong to it
        for name in names:
            path = files.join(url, folder, name)
            if name.startswith("."):
                if is_nifti(name):
                    hidden.append(path)
            elif is_nifti(name):
                cases.append(Case(file_case_name(name), path))
            else:
                ignored += 1
    return _found(url, cases, ignored, sorted(hidden), log)


def is_batch_input(path: str) -> bool:
    """Whether `path` is a list file (``.txt``/``.lst``) or a folder of cases (a folder without
    DICOM files directly in it); anything else is a single case. A URL (``gs://...``) is read
    through `lsnet_tf.utils.files`."""
    if files.is_remote(path):
        if files.isfile(path):
            return path.lower().endswith(LIST_EXTENSIONS)
        return files.isdir(path) and not _url_holds_dicom(path, _url_tree(path).get("", []))
    if os.path.isfile(path):
        return path.lower().endswith(LIST_EXTENSIONS)
    return os.path.isdir(path) and not holds_dicom(path)


def file_case_name(path: str) -> str:
    """A file's case name: its name without ``.nii``/``.nii.gz`` (and a trailing ``_0000``) or
    without its extension."""
    name = os.path.basename(path)
    if is_nifti(name):
        return case_name(name, strip_channel=True)
    return os.path.splitext(name)[0] or name


def folder_case_name(relative: str) -> str:
    """A DICOM folder's case name: its relative path with ``/`` replaced by ``__``."""
    return "__".join(p for p in relative.replace(os.sep, "/").split("/") if p not in ("", "."))


def _folder_cases(folder: str, out_dir: str | None, log) -> list[Case]:
    out_real = os.path.realpath(out_dir) if out_dir else None
    cases, ignored, hidden = [], 0, []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(root, d)) != out_real)
        if root != folder and holds_dicom(root):
            cases.append(Case(folder_case_name(os.path.relpath(root, folder)),
                              os.path.abspath(root)))
            dirs[:] = []  # the folders under a series belong to it
            continue
        for name in sorted(names):
            if name.startswith("."):
                if is_nifti(name):
                    hidden.append(os.path.join(root, name))
                continue
            if is_nifti(name):
                cases.append(Case(file_case_name(name), os.path.abspath(os.path.join(root, name))))
            else:
                ignored += 1
    return _found(folder, cases, ignored, hidden, log)


def _found(where: str, cases: list[Case], ignored: int, hidden: list[str], log) -> list[Case]:
    """`cases` sorted, after logging what the search of `where` left out."""
    if ignored:
        log(f"{where}: left out {ignored} files that are neither NIfTI nor in a DICOM folder")
    if hidden:
        log(f"warning: {where}: left out {len(hidden)} hidden NIfTI file(s) (names starting "
            f"with '.'; rename them to predict them): {', '.join(hidden)}")
    return sorted(cases, key=lambda c: (c.name, c.input))


def _list_cases(list_path: str) -> list[Case]:
    base = os.path.dirname(os.path.abspath(list_path))
    try:
        with open(list_path, encoding="utf-8-sig") as f:  # a byte order mark is no path
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BatchError(f"{list_path}: unreadable list file ({type(e).__name__}: {e})") from e
    cases = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if files.is_remote(entry):  # a case in a bucket: named by its own name
            url = entry.rstrip("/")
            cases.append(Case(file_case_name(url) if files.isfile(url)
                              else url.rsplit("/", 1)[-1], url))
            continue
        path = os.path.normpath(os.path.join(base, entry))
        if os.path.isdir(path):
            relative = os.path.relpath(path, base)
            inside = relative != os.curdir and not relative.startswith(os.pardir)
            name = folder_case_name(relative) if inside else os.path.basename(path)
        else:
            name = file_case_name(path)
        cases.append(Case(name, path))
    return cases


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a case folder directly under ``OUT``, or None when it can: empty,
    ``.`` or ``..``, a path separator or NUL in it, a leading ``.`` (hidden, and the batch's
    work folders ``.<case>.partial``/``.<case>.old``), a name of `RESERVED_NAMES`, or longer
    than `MAX_NAME_BYTES`."""
    if name in ("", ".", ".."):
        return (f"the case name {name!r} would be "
                + {"": "no folder", ".": "the output folder itself",
                   "..": "the output folder's parent"}[name])
    if any(sep in name for sep in {"/", "\\", "\0", os.sep, os.altsep or "/"}):
        return f"the case name {name!r} holds a path separator"
    if name.startswith("."):
        return (f"the case name {name!r} starts with '.' (kept for hidden files and the batch's "
                "work folders .<case>.partial and .<case>.old)")
    if name.lower() in RESERVED_NAMES:
        return f"the case name {name!r} is the name of a file the batch writes in its output folder"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"the case name is longer than {MAX_NAME_BYTES} bytes"
    return None


def check_case_names(cases: Sequence[Case]) -> list[Case]:
    """`cases` with `Case.error` set on those whose name is unsafe (`name_problem`) or shared
    with another input (compared without regard to letter case): each such case fails alone,
    naming its input file, and the others run."""
    by_name = {}
    for case in cases:
        by_name.setdefault(case.name.lower(), []).append(case.input)
    out = []
    for case in cases:
        if case.error is None:
            problem = name_problem(case.name)
            shared = by_name[case.name.lower()]
            if problem:
                error = f"{case.input}: {problem}; rename the input"
            elif len(shared) > 1:
                error = (f"{case.input}: the case name {case.name!r} is shared with "
                         f"{', '.join(p for p in shared if p != case.input) or case.input} "
                         "(their outputs would overwrite each other); rename one of them")
            else:
                error = None
            case = dataclasses.replace(case, error=error)
        out.append(case)
    return out


def find_cases(path: str, out_dir: str | None = None, log=print) -> list[Case]:
    """The cases of a folder or list file `path` (see the module docstring).

    `out_dir`, when it lies inside the folder, is not searched. Raises `BatchError` for a
    folder or list without cases; a case with an unsafe name or a name shared with another
    input comes back with its `Case.error` set (`check_case_names`).
    """
    if files.is_remote(path):
        if path.lower().endswith(LIST_EXTENSIONS) and files.isfile(path):
            raise BatchError(f"{path}: a list of cases is read from a local file only; give the "
                             "folder of cases in the bucket, or a local list naming URLs")
        cases = _url_cases(path, log)
        if not cases:
            raise BatchError(f"{path}: no cases found: no NIfTI files (.nii, .nii.gz) and no "
                             "folders with DICOM files under it")
    elif os.path.isfile(path):
        cases = _list_cases(path)
        if not cases:
            raise BatchError(f"{path}: the list names no cases (one path a line; blank lines and "
                             "lines starting with # are ignored)")
    else:
        cases = _folder_cases(path, out_dir, log)
        if not cases:
            raise BatchError(f"{path}: no cases found: no NIfTI files (.nii, .nii.gz) and no "
                             "folders with DICOM files under it, and no DICOM files directly in "
                             "it (a single series)")
    return check_case_names(cases)


def _is_within(path: str, folder: str) -> bool:
    """Whether the real path of `path` is `folder`'s or lies under it."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_out_dir(out_dir: str, inputs: Sequence[str] = ()) -> None:
    """Refuse (`BatchError`) an output folder `out_dir` that is an existing file (or lies under
    one), or that is one of the folders `inputs` (an input folder of cases, DICOM series
    folders) or lies inside it: its outputs would be read as input on the next run. Called
    before the model loads. A URL is compared by name with the URLs among `inputs`."""
    if files.is_remote(out_dir):
        out = out_dir.rstrip("/")
        for folder in inputs:
            inside = str(folder).rstrip("/")
            if files.is_remote(folder) and (out == inside or out.startswith(inside + "/")):
                where = "is" if out == inside else "lies inside"
                raise BatchError(f"--out {out_dir} {where} the input folder {folder}: the "
                                 "outputs would be read as input on the next run; choose an "
                                 "output folder outside it")
        if gcs.is_gcs(out):
            gcs.makedirs(out)  # a missing bucket: `lsnet_tf.utils.gcs.BucketNotFound`
        if files.isfile(out):
            raise BatchError(f"--out {out_dir} is an existing file, not a folder; choose a folder")
        return
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise BatchError(f"--out {out_dir} is an existing file, not a folder; choose a folder")
    parent = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise BatchError(f"--out {out_dir} lies under {parent}, which is a file, not a folder")
    for folder in inputs:
        if os.path.isdir(folder) and _is_within(out_dir, folder):
            where = "is" if os.path.realpath(out_dir) == os.path.realpath(folder) else \
                "lies inside"
            raise BatchError(f"--out {out_dir} {where} the input folder {folder}: the outputs "
                             "would be read as input on the next run; choose an output folder "
                             "outside it")


def case_path(out_dir: str, name: str, pattern: str = "{}") -> str:
    """``out_dir/<pattern with name>``, checked to be a direct child of `out_dir` once every
    link is resolved (`BatchError` otherwise): the only way the batch names a path under
    ``OUT``, so that nothing is written, renamed or removed elsewhere."""
    problem = name_problem(name)
    if problem:
        raise BatchError(f"{out_dir}: {problem}; nothing written")
    path = os.path.join(out_dir, pattern.format(name))
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(out_dir):
        raise BatchError(f"{path} resolves to {os.path.realpath(path)}, outside --out "
                         f"{out_dir}; nothing written")
    return path
