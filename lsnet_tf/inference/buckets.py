"""``python -m lsnet_tf.predict --out gs://bucket/preds``: a case's outputs written to a URL.

The writers of a case (nibabel, PIL, pydicom, the review thumbnails) write local files, so a
case is predicted into a temporary local folder and then published to its URL by `publish_case`
(`lsnet_tf.utils.files`): the URL's old ``summary.json`` is removed first, every other file is
uploaded, ``summary.json`` last, then the objects of an earlier prediction that this one did not
write are removed. A case in the bucket is complete exactly when its ``summary.json`` is there
(each object appears only whole): a run killed while publishing leaves a case without one, which
the next run predicts again.

Many cases (`mirror`): the output URL's earlier outputs are copied to a temporary local folder,
so that resuming (`lsnet_tf.inference.batch`: skipping complete cases, checking their sizes and
SHA-256) works on it as on a local ``--out``; each case is published as soon as it is done
(`predict_and_publish`, also on a Beam worker), and ``cases.csv``, ``cases.json`` and
``review.html`` when every case is (`publish_summary`).

Inputs in a bucket are read from a temporary local copy of that one case
(`lsnet_tf.inference.cases.predict_case`, `lsnet_tf.utils.staging`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Callable, Iterator

from lsnet_tf.utils import files

__all__ = ["publish_case", "predict_and_publish", "mirror", "publish_summary"]

SUMMARY = "summary.json"
# The files of many cases' output folder itself (`lsnet_tf.inference.batch`).
BATCH_FILES = ("cases.csv", "cases.json", "review.html")


def publish_case(folder: str, url: str) -> list[str]:
    """Copy the case folder `folder` (local) to `url` (see the module docstring); returns the
    relative paths published."""
    summary = files.join(url, SUMMARY)
    if files.isfile(summary):
        files.remove(summary)
    names = files.upload_tree(folder, url, last=(SUMMARY,))
    if files.isdir(url):
        for old in set(files.walk_files(url)) - set(names):
            files.remove(files.join(url, old))
    return names


def predict_and_publish(predictor, input_path: str, folder: str, *, predict: Callable,
                        out_url: str, shown_as: str | None = None, **kwargs) -> dict:
    """``predict(predictor, input_path, folder, shown_as=URL, **kwargs)`` (a local folder, as
    `lsnet_tf.inference.batch` gives it), then `publish_case` to ``out_url/<case>`` (the case
    named by `shown_as`, the case's final local folder); returns the summary."""
    url = files.join(out_url, os.path.basename(os.path.normpath(shown_as or folder)))
    summary = predict(predictor, input_path, folder, shown_as=url, **kwargs)
    publish_case(folder, url)
    return summary


def predict_to_url(predict: Callable, predictor, input_path: str, out_url: str,
                   **kwargs) -> dict:
    """One case: ``predict(predictor, input_path, LOCAL, shown_as=out_url, **kwargs)`` into a
    temporary folder, published to `out_url`; returns the summary."""
    with tempfile.TemporaryDirectory(prefix="lsnet_tf-out-") as tmp:
        local = os.path.join(tmp, "case")
        summary = predict(predictor, input_path, local, shown_as=out_url, **kwargs)
        publish_case(local, out_url)
    return summary


@contextlib.contextmanager
def mirror(url: str) -> Iterator[str]:
    """A temporary local folder holding the files already under `url` (none when it does not
    exist yet), removed when the block ends."""
    tmp = tempfile.mkdtemp(prefix="lsnet_tf-out-")
    try:
        local = os.path.join(tmp, "out")
        os.makedirs(local)
        if files.isdir(url):
            files.download_tree(url, local)
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_summary(local: str, url: str) -> None:
    """Copy the batch's own files (`BATCH_FILES`) from `local` to `url`; a ``review.html`` the
    run removed is removed there too."""
    for name in BATCH_FILES:
        path, target = os.path.join(local, name), files.join(url, name)
        if os.path.isfile(path):
            files.copy_file(path, target)
        elif files.isfile(target):
            files.remove(target)
