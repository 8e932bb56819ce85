"""Writing files so that a reader never sees a half-written one.

`atomic_write` writes to ``<path>.tmp`` in the same folder and renames it onto `path` only when
the ``with`` block ends without an exception (``os.replace``: atomic on POSIX and Windows); on an
exception the temporary file is removed and `path` keeps its previous content, if any.
`write_text` and `write_json` are the common cases. `write_text` and `write_bytes` also take a
URL (``gs://bucket/x``, ``ram://...``: `is_remote`): the file is then written through
``tf.io.gfile`` by the same rule (to ``<path>.tmp``, renamed onto `path` when complete; on an
error the temporary file is removed), so that a Beam worker or a command writing to a bucket
never leaves half a file under its final name. `exists`, `isdir`, `isfile`, `listdir`, `glob`,
`read_text`, `makedirs` and `remove` work on local paths with the standard library, and on URLs
through ``tf.io.gfile`` (TensorFlow is imported only then). `fingerprint` names a file's or a
folder's content (a model's: which model wrote a prediction). `describe_outputs` records the
size and SHA-256 of written files and `check_outputs` tells whether they are still those.
`writing` turns an `OSError` while writing into a `WriteError` naming the path and what was being
written.

Folders (SavedModels) and files written by TensorFlow's own writers (TFRecord shards) cannot go
through a Python file object; they follow the same write-then-rename rule in their own modules
(``export.saved_model.write_atomically``, ``data.records.ShardWriter``).

Which layer serves a path:

- a local path: the standard library;
- ``gs://bucket/name``: the google-cloud-storage client (`lsnet_tf.utils.gcs`, which says why
  this client and not ``tf.io.gfile``): it honours ``STORAGE_EMULATOR_HOST`` and runs the same
  in this process and on a Beam worker. An upload is visible only once whole, so a ``gs://``
  file is written by one upload (no temporary name). Its errors are `lsnet_tf.utils.gcs.
  StorageError` (an `OSError`) naming the URL: a missing bucket or object, no permission, an
  object read short of its size;
- any other URL (``ram://``, ``s3://`` with tensorflow-io, ...): ``tf.io.gfile``.

What TensorFlow itself reads and writes (TFRecord shards read by tf.data, checkpoints,
TensorBoard logs, SavedModels) goes through TensorFlow's own filesystems. `copy_file`,
`download_tree` and `upload_tree` move files between a local folder and any URL (a case's
temporary local copy: `lsnet_tf.utils.staging`).
"""
from __future__ import annotations

import contextlib
import glob as _glob
import hashlib
import json
import os
from typing import IO, Iterator

from lsnet_tf.utils import gcs

TMP_SUFFIX = ".tmp"


def is_remote(path) -> bool:
    """Whether `path` is a URL (``gs://bucket/x``, ``s3://...``) rather than a local path."""
    return "://" in str(path)


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def join(base: str, *parts: str) -> str:
    """`base` and `parts` joined with ``/`` for a URL, ``os.path.join`` for a local path."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/")] + [p.strip("/") for p in parts if p])
    return os.path.join(base, *parts)


class _Local:
    """Local paths: the standard library."""

    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)
    isfile = staticmethod(os.path.isfile)
    getsize = staticmethod(os.path.getsize)
    listdir = staticmethod(os.listdir)
    glob = staticmethod(_glob.glob)
    remove = staticmethod(os.remove)

    @staticmethod
    def walk_files(folder):
        return sorted(os.path.relpath(os.path.join(root, n), folder).replace(os.sep, "/")
                      for root, _, names in os.walk(folder) for n in names)

    @staticmethod
    def read_bytes(path):
        with open(path, "rb") as f:
            return f.read()

    @staticmethod
    def makedirs(path):
        os.makedirs(path, exist_ok=True)

    @staticmethod
    def rmtree(path):
        import shutil

        shutil.rmtree(path)


class _GFile:
    """URLs of TensorFlow's filesystems (``ram://``, ``s3://`` with tensorflow-io, ...)."""

    @staticmethod
    def exists(path):
        return _gfile().exists(path)

    @staticmethod
    def isdir(path):
        return _gfile().isdir(path)

    @staticmethod
    def isfile(path):
        return _gfile().exists(path) and not _gfile().isdir(path)

    @staticmethod
    def listdir(path):
        return [n.rstrip("/") for n in _gfile().listdir(path)]

    @staticmethod
    def glob(pattern):
        return _gfile().glob(pattern)

    @staticmethod
    def walk_files(folder):
        out = []
        for root, _, names in _gfile().walk(folder):
            rel = root[len(folder.rstrip("/")):].strip("/")
            out += [f"{rel}/{n}" if rel else n for n in names]
        return sorted(out)

    @staticmethod
    def getsize(path):
        return _gfile().stat(path).length

    @staticmethod
    def read_bytes(path):
        with _gfile().GFile(path, "rb") as f:
            return f.read()

    @staticmethod
    def makedirs(path):
        _gfile().makedirs(path)

    @staticmethod
    def remove(path):
        _gfile().remove(path)

    @staticmethod
    def rmtree(path):
        _gfile().rmtree(path)


def _layer(path):
    """The layer that serves `path` (module docstring): `lsnet_tf.utils.gcs` for ``gs://``,
    ``tf.io.gfile`` for another URL, the standard library for a local path."""
    if gcs.is_gcs(path):
        return gcs
    return _GFile if is_remote(path) else _Local


def exists(path: str) -> bool:
    return _layer(path).exists(path)


def isdir(path: str) -> bool:
    return _layer(path).isdir(path)


def isfile(path: str) -> bool:
    return _layer(path).isfile(path)


def listdir(path: str) -> list[str]:
    """The names in folder `path` (without the trailing ``/`` that tf.io.gfile gives folders)."""
    return _layer(path).listdir(path)


def glob(pattern: str) -> list[str]:
    return _layer(pattern).glob(pattern)


def walk_files(folder: str) -> list[str]:
    """Every file under `folder`, as paths relative to it (``/``-separated), sorted."""
    return _layer(folder).walk_files(folder)


def getsize(path: str) -> int:
    return _layer(path).getsize(path)


def read_bytes(path: str) -> bytes:
    """The bytes of `path`."""
    return _layer(path).read_bytes(path)


def read_text(path: str) -> str:
    """The text of `path` (UTF-8; a local file with universal newlines, as ``open``)."""
    if is_remote(path):
        return read_bytes(path).decode("utf-8")
    with open(path, encoding="utf-8") as f:
        return f.read()


def makedirs(path: str) -> None:
    """Create folder `path` and its parents; nothing when it exists."""
    _layer(path).makedirs(path)


def remove(path: str) -> None:
    _layer(path).remove(path)


def rmtree(path: str) -> None:
    """Remove folder `path` and everything under it."""
    _layer(path).rmtree(path)


def copy_file(src: str, dst: str) -> str:
    """Copy file `src` to `dst`, each a local path or a URL; `dst` appears only when whole (a
    local or ``ram://`` file written under a temporary name, then renamed; a ``gs://`` object
    by one upload). Creates `dst`'s folder; returns `dst`."""
    if gcs.is_gcs(src) and gcs.is_gcs(dst):
        gcs.copy(src, dst)
        return dst
    if gcs.is_gcs(src) and not is_remote(dst):
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        return gcs.download(src, dst)
    return write_bytes(dst, read_bytes(src))


def download_tree(url: str, folder: str) -> list[str]:
    """Copy every file under `url` into the local `folder` (same relative paths); returns those
    paths."""
    names = walk_files(url)
    for name in names:
        copy_file(join(url, name), os.path.join(folder, *name.split("/")))
    return names


def upload_tree(folder: str, url: str, last=()) -> list[str]:
    """Copy every file under the local `folder` to `url` (same relative paths), the names in
    `last` after all the others (``summary.json``: a reader that finds it finds the rest);
    returns the relative paths."""
    names = walk_files(folder)
    for name in sorted(names, key=lambda n: (n in last, n)):
        copy_file(os.path.join(folder, *name.split("/")), join(url, name))
    return names


def _write_remote(path: str, data) -> str:
    """Write `data` (bytes, or str as UTF-8) to `path` through ``tf.io.gfile`` atomically: to
    ``<path>.tmp`` first, renamed onto `path` when complete (the temporary file is removed on
    an error). Works on every filesystem TensorFlow writes (``gs://`` ...; there the rename is a
    copy, and the final name still appears only once the file is whole). Creates the folder;
    returns `path`."""
    if gcs.is_gcs(path):
        return gcs.write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
    gfile = _gfile()
    tmp = str(path) + TMP_SUFFIX
    folder = os.path.dirname(str(path))
    if folder:
        gfile.makedirs(folder)
    try:
        with gfile.GFile(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if gfile.exists(tmp):
            gfile.remove(tmp)
        raise
    return path


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
    """Write `text` (UTF-8) to `path` atomically, creating its folder; returns `path`. A URL
    (`is_remote`) is written through ``tf.io.gfile`` (module docstring)."""
    if is_remote(path):
        return _write_remote(path, text)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        f.write(text)
    return path


def write_bytes(path: str, data: bytes) -> str:
    """Write `data` to `path` atomically, creating its folder; returns `path`. A URL
    (`is_remote`) is written through ``tf.io.gfile`` (module docstring)."""
    if is_remote(path):
        return _write_remote(path, data)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(data)
    return path


def write_json(path: str, data, sort_keys: bool = False) -> str:
    """Write `data` as JSON (indented by 2, no final newline) to `path` atomically, creating its
    folder; returns `path` (a URL: `write_text`)."""
    if is_remote(path):
        return _write_remote(path, json.dumps(data, indent=2, sort_keys=sort_keys))
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
