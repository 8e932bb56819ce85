"""Writing files so that a reader never sees a half-written one.

`atomic_write` writes to ``<path>.tmp`` in the same folder and renames it onto `path` only when
the ``with`` block ends without an exception (``os.replace``: atomic on POSIX and Windows); on an
exception the temporary file is removed and `path` keeps its previous content, if any.
`write_text` and `write_json` are the common cases. `fingerprint` names a file's or a folder's
content (a model's: which model wrote a prediction). `describe_outputs` records the size and
SHA-256 of written files and `check_outputs` tells whether they are still those. `writing` turns
an `OSError` while writing into a `WriteError` naming the path and what was being written.

Folders (SavedModels) and files written by TensorFlow's own writers (TFRecord shards) cannot go
through a Python file object; they follow the same write-then-rename rule in their own modules
(``export.saved_model.write_atomically``, ``data.records.ShardWriter``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import IO, Iterator

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
    """Open ``<path>.tmp`` for writing; on success rename it to `path`, on error remove it.

    `mode` is ``"w"`` (UTF-8 text) or ``"wb"`` (bytes). The folder of `path` must exist.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', received {mode!r}")
    tmp = os.fspath(path) + TMP_SUFFIX
    f = open(tmp, mode, encoding="utf-8" if mode == "w" else None)
    try:
        with f:
            yield f
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def write_text(path: str, text: str) -> str:
    """Write `text` (UTF-8) to `path` atomically, creating its folder; returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        f.write(text)
    return path


def write_bytes(path: str, data: bytes) -> str:
    """Write `data` to `path` atomically, creating its folder; returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(data)
    return path


def write_json(path: str, data, sort_keys: bool = False) -> str:
    """Write `data` as JSON (indented by 2, no final newline) to `path` atomically, creating its
    folder; returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        json.dump(data, f, indent=2, sort_keys=sort_keys)
    return path


def fingerprint(path: str) -> str:
    """SHA-256 (hex) of a file's bytes, or of a folder's files: each one's path relative to the
    folder and its bytes, in sorted order (a SavedModel's graph, variables and assets)."""
    digest = hashlib.sha256()

    def add(file_path: str) -> None:
        with open(file_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)

    if os.path.isdir(path):
        files = sorted(os.path.relpath(os.path.join(root, name), path)
                       for root, _, names in os.walk(path) for name in names)
        for rel in files:
            digest.update(rel.replace(os.sep, "/").encode() + b"\0")
            add(os.path.join(path, rel))
            digest.update(b"\0")
    else:
        add(path)
    return digest.hexdigest()


class WriteError(OSError):
    """A file or folder that cannot be written; the message names it and what it is."""


@contextlib.contextmanager
def writing(what: str, path: str) -> Iterator[None]:
    """Turn an `OSError` inside the block (permission denied, read-only or full disk, a file
    where a folder should be) into a `WriteError` saying ``<path>: cannot write <what>
    (<reason>)``; an error that is one already passes unchanged."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        where = e.filename if e.filename and os.fspath(e.filename) != os.fspath(path) else None
        raise WriteError(f"{path}: cannot write {what} ({reason}"
                         + (f": {where}" if where else "") + ")") from e


def describe_outputs(folder: str, names) -> dict:
    """``{name: {"bytes": size, "sha256": hex}}`` of the files `names` (relative to `folder`,
    ``/``-separated): what a summary records so that a later run can tell its outputs are whole."""
    return {name: {"bytes": os.path.getsize(os.path.join(folder, name)),
                   "sha256": fingerprint(os.path.join(folder, name))} for name in names}


def check_outputs(folder: str, outputs) -> list[str]:
    """What is wrong with the files `outputs` (`describe_outputs`) under `folder`: each one
    missing, of another size or another SHA-256 is one phrase; [] when all are as recorded."""
    if not isinstance(outputs, dict) or not outputs:
        return ["its summary records no output sizes and checksums (an older version wrote it)"]
    problems = []
    for name, expected in sorted(outputs.items()):
        path = os.path.join(folder, *str(name).split("/"))
        if not isinstance(expected, dict):
            problems.append(f"{name}: no size and checksum recorded")
        elif not os.path.isfile(path):
            problems.append(f"{name} is missing")
        elif os.path.getsize(path) != expected.get("bytes"):
            problems.append(f"{name} has {os.path.getsize(path)} bytes, not the "
                            f"{expected.get('bytes')} recorded")
        elif fingerprint(path) != expected.get("sha256"):
            problems.append(f"{name} differs from the file written (SHA-256)")
    return problems
