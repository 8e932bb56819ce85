"""One case's temporary local copy, for readers that need local files (pydicom, nibabel).

`local_copies(*paths)` yields a local path for each of `paths`: a local path as it is, a URL
(``gs://bucket/archive/PANCREAS_0001`` or ``.../label0001.nii.gz``) copied into a temporary
folder first: that file, or that folder and everything under it (a DICOM series with its
subfolders), never more; the folder is removed when the block ends. The copy keeps the URL's
last name (``label0001.nii.gz`` stays that), so readers that look at names behave the same.

An error raised in the block names the URL, not the temporary copy: every temporary path in its
message (and in its ``path``/``filename`` attributes) is replaced by the URL it came from
(`to_source` does the same for other strings: a summary's file names, skipped files, notes).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from lsnet_tf.utils import files


class Staged:
    """Where each staged URL's copy lies: ``{local: url}``."""

    def __init__(self):
        self.sources: dict[str, str] = {}

    def to_source(self, text):
        """`text` (a string, or a list/tuple/dict of them) with every temporary path replaced by
        its URL; anything else unchanged."""
        if isinstance(text, str):
            for local, url in self.sources.items():
                if local in text:
                    text = text.replace(local + os.sep, url.rstrip("/") + "/").replace(local, url)
            return text
        if isinstance(text, (list, tuple)):
            return type(text)(self.to_source(t) for t in text)
        if isinstance(text, dict):
            return {k: self.to_source(v) for k, v in text.items()}
        return text

    def rename_in(self, error: BaseException) -> None:
        """Replace the temporary paths in `error`'s message and path attributes by their URLs."""
        if not self.sources:
            return
        for attr in ("path", "filename", "filename2", "reason"):
            value = getattr(error, attr, None)
            if isinstance(value, str):
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(error, attr, self.to_source(value))
        if isinstance(error, OSError) and error.strerror is not None:
            return  # str() is built from errno, strerror and filename (renamed above)
        error.args = tuple(self.to_source(a) if isinstance(a, str) else a for a in error.args)


def _stage(url: str, root: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1] or "case"
    local = os.path.join(root, name)
    if files.isfile(url):
        files.copy_file(url, local)
    elif files.isdir(url):
        os.makedirs(local, exist_ok=True)
        files.download_tree(url, local)
    else:
        raise FileNotFoundError(2, "not found", url)
    return local


@contextlib.contextmanager
def local_copies(*paths) -> Iterator[tuple]:
    """``(staged, local_paths)``: each of `paths` (None stays None) as a local path, URLs copied
    to a temporary folder removed when the block ends (see the module docstring)."""
    staged = Staged()
    root = None
    try:
        local = []
        for path in paths:
            if path is None or not files.is_remote(path):
                local.append(path)
                continue
            if root is None:
                root = tempfile.mkdtemp(prefix="lsnet_tf-case-")
            where = os.path.join(root, str(len(local)))
            os.makedirs(where)
            copy = _stage(str(path), where)
            staged.sources[copy] = str(path).rstrip("/")
            local.append(copy)
        yield staged, tuple(local)
    except BaseException as e:
        staged.rename_in(e)
        raise
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
