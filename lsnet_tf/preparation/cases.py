"""Finding the patients of ``python -m lsnet_tf.prepare``'s two input layouts.

``tcia``: one folder per patient under ``--images`` (``PANCREAS_0001/<study>/<series>/*.dcm``),
matched to ``--labels/labelNNNN.nii.gz`` by the number in the names (0001 <-> 1). ``msd``:
``imagesTr/x.nii.gz`` with ``labelsTr/x.nii.gz`` (hidden files such as macOS ``._x.nii.gz`` are
ignored; an image named with the nnU-Net channel suffix, ``x_0000.nii.gz``, pairs with
``labelsTr/x.nii.gz`` when there is no ``labelsTr/x_0000.nii.gz``: `lsnet_tf.data.names`). The
target is every non-zero label value, or the union of ``--label-values``. Label values must be
integers >= 0 (NaN, fractional or negative values fail the patient); for MSD, a value that is not
a class of the task's own ``dataset.json`` (``labels``) fails it too. Image voxels must be finite
(a NaN or infinite voxel fails the patient, never becomes a HU).

Each patient is a `lsnet_tf.data.volumes.PatientSource`: its id, its input paths and a loader
that reads it only when it is prepared (in process, or on a Beam worker: the loaders are
module-level functions bound with ``functools.partial``, so that they pickle).

Both layouts may lie in a bucket (``--images gs://archive/Pancreas-CT``, ``--root
gs://archive/Task07_Pancreas``): folders are listed through `lsnet_tf.utils.files`, and a
patient's loader copies that patient's series folder and label (or image and label) to a
temporary local folder, reads them there and removes it (`lsnet_tf.utils.staging`); errors,
skipped files and notes name the URLs.
"""
from __future__ import annotations

import collections
import functools
import json
import os
import re

import numpy as np

from lsnet_tf.utils import files, staging
from lsnet_tf.data import dicom, nifti, volumes
from lsnet_tf.data.names import case_name, is_nifti
from lsnet_tf.data.volumes import MissingLabelError, PatientSource, PrepareError


def patient_number(name: str) -> int | None:
    """The last run of digits in a file or folder name: ``PANCREAS_0012`` and ``label0012.nii.gz``
    both give 12; None when there is none."""
    base = case_name(name)
    digits = re.findall(r"\d+", name if base is None else base)
    return int(digits[-1]) if digits else None


def _visible(names):
    return sorted(n for n in names if not n.startswith("."))


def _load_tcia(folder, label, label_problem, series_uid, axial_only, origin_tol_mm):
    if label is None:
        raise MissingLabelError(folder, label_problem)
    with staging.local_copies(folder, label) as (staged, (folder, label)):
        series = dicom.read_series(folder, series_uid=series_uid, axial_only=axial_only)
        labels = nifti.read_label(label, series.affine, series.hu.shape, reference=folder,
                                  origin_tol_mm=origin_tol_mm)
        return volumes.LabelledVolume(
            hu=series.hu, labels=labels, affine=series.affine, spacing=series.spacing,
            skipped_files=[list(staged.to_source(list(s))) for s in series.skipped_files],
            notes=staged.to_source(list(series.notes)))


def _absolute(path):
    """A local path made absolute; a URL as it is."""
    return path if path is None or files.is_remote(path) else os.path.abspath(path)


def tcia_patients(images: str, labels: str, series_uid=(), axial_only: bool = False,
                  origin_tol_mm: float = volumes.ORIGIN_TOLERANCE_MM):
    """Patients of the TCIA layout: ``(sources, notes)``.

    Each patient folder of `images` is matched to the label file of `labels` with the same number.
    A folder with no label (or several) becomes a patient whose load raises `MissingLabelError`;
    labels with no folder are listed in `notes`.
    """
    for d, what in ((images, "--images"), (labels, "--labels")):
        if not files.isdir(d):
            raise PrepareError(d, f"{what} is not a folder")
    folders = [n for n in _visible(files.listdir(images))
               if files.isdir(files.join(images, n))]
    if not folders:
        raise PrepareError(images, "no patient folders (expected one folder per patient, e.g. "
                                   "PANCREAS_0001/)")
    label_files = collections.defaultdict(list)
    for name in _visible(files.listdir(labels)):
        if is_nifti(name) and patient_number(name) is not None:
            label_files[patient_number(name)].append(files.join(labels, name))
    folder_numbers = collections.Counter(patient_number(f) for f in folders)
    sources = []
    for name in folders:
        folder, number = files.join(images, name), patient_number(name)
        matches = label_files.get(number, []) if number is not None else []
        label, problem = None, None
        if number is None:
            problem = "folder name has no number to match a label file by"
        elif folder_numbers[number] > 1:
            problem = f"several patient folders have the number {number}; cannot match labels"
        elif not matches:
            problem = f"no label file with number {number} in {labels}"
        elif len(matches) > 1:
            problem = f"several label files with number {number}: {matches}"
        else:
            label = matches[0]
        load = functools.partial(_load_tcia, folder, label, problem, series_uid, axial_only,
                                 origin_tol_mm)
        sources.append(PatientSource(name, load, {"images": _absolute(folder),
                                                  "label": _absolute(label)}))
    orphans = sorted(p for n, ps in label_files.items() if n not in folder_numbers for p in ps)
    notes = [f"{len(orphans)} label files have no patient folder: "
             + ", ".join(os.path.basename(p) for p in orphans)] if orphans else []
    return sources, notes


def _load_msd(image, label, origin_tol_mm, task_labels=None):
    if label is None:
        raise MissingLabelError(image, "no label file of the same name in labelsTr/")
    with staging.local_copies(image, label) as (staged, (image_copy, label_copy)):
        volume = nifti.read_image_and_label(image_copy, label_copy, origin_tol_mm=origin_tol_mm)
    volume.notes = staged.to_source(list(volume.notes))
    if task_labels:
        found = {int(v) for v in np.unique(volume.labels)}
        unknown = sorted(found - set(task_labels))
        if unknown:
            raise nifti.NiftiError(label, f"label values {unknown} are not classes of this task "
                                          f"(dataset.json labels {task_labels})")
    return volume


def msd_patients(root: str, origin_tol_mm: float = volumes.ORIGIN_TOLERANCE_MM):
    """Patients of the MSD layout: ``(sources, notes, label_names)``; label_names from the task's
    own dataset.json ({} when absent). With label names, a patient whose label holds a value that
    is not one of them fails (`NiftiError` naming the label file and the values)."""
    images, labels = files.join(root, "imagesTr"), files.join(root, "labelsTr")
    for d in (images, labels):
        if not files.isdir(d):
            raise PrepareError(d, "missing: the MSD layout has imagesTr/ and labelsTr/")
    image_files = [n for n in _visible(files.listdir(images)) if is_nifti(n)]
    if not image_files:
        raise PrepareError(images, "no NIfTI images (*.nii.gz)")
    label_names = {case_name(n): n for n in _visible(files.listdir(labels)) if is_nifti(n)}
    notes = []
    task_labels = {}
    meta = files.join(root, "dataset.json")
    if files.isfile(meta):
        try:
            task_labels = {int(k): str(v)
                           for k, v in json.loads(files.read_text(meta)).get("labels", {}).items()}
        except (ValueError, AttributeError, OSError) as e:
            notes.append(f"{meta} not read ({e})")
    sources, used = [], set()
    for name in image_files:
        pid = case_name(name)
        key = pid if pid in label_names else case_name(name, strip_channel=True)  # nnU-Net
        label = files.join(labels, label_names[key]) if key in label_names else None
        used.add(key)
        sources.append(PatientSource(
            key, functools.partial(_load_msd, files.join(images, name), label, origin_tol_mm,
                                   task_labels),
            {"image": _absolute(files.join(images, name)), "label": _absolute(label)}))
    orphans = sorted(set(label_names) - used)
    if orphans:
        notes.append(f"{len(orphans)} labels have no image: {', '.join(orphans)}")
    return sources, notes, task_labels
