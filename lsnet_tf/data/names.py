"""File names of cases: which files are NIfTI, and the case a NIfTI file is of.

One rule for every command that pairs or names cases by file name (``prepare msd``'s images and
labels, ``evaluate``'s predictions and labels, ``predict``'s many cases): a NIfTI file is named
``<case>.nii.gz`` or ``<case>.nii`` (the suffix in any letter case), and `case_name` is the name
without it. With ``strip_channel``, a trailing ``_0000`` (the channel suffix of the Medical
Segmentation Decathlon / nnU-Net ``imagesTs`` layout: ``liver_132_0000.nii.gz`` is case
``liver_132``) goes too; the callers that want it say so:

- ``predict`` (many cases) names each case this way, so that an nnU-Net image folder gives the
  case names of its labels;
- ``prepare msd`` pairs ``imagesTr/x.nii.gz`` with ``labelsTr/x.nii.gz``, and only when there is
  no such label with ``labelsTr/`` named without the channel suffix;
- ``evaluate`` (folder mode) does not strip it: predictions and labels carry the case's name.

Hidden files (a name starting with ``.``, such as macOS's ``._x.nii.gz``) are left out by the
callers that list folders, not here. Standard library only: the command modules import this.
"""
from __future__ import annotations

NIFTI_SUFFIXES = (".nii.gz", ".nii")
CHANNEL_SUFFIX = "_0000"


def is_nifti(filename: str) -> bool:
    """Whether `filename` ends with ``.nii.gz`` or ``.nii`` (any letter case)."""
    return filename.lower().endswith(NIFTI_SUFFIXES)


def case_name(filename: str, strip_channel: bool = False) -> str | None:
    """The case of a NIfTI file name: ``'a.nii.gz'`` -> ``'a'``; None when it is not NIfTI.

    With `strip_channel`, a trailing ``_0000`` is removed too when something is left
    (``'liver_132_0000.nii.gz'`` -> ``'liver_132'``; ``'_0000.nii'`` stays ``'_0000'``).
    """
    for suffix in NIFTI_SUFFIXES:
        if filename.lower().endswith(suffix):
            name = filename[: -len(suffix)]
            if strip_channel and name.endswith(CHANNEL_SUFFIX) and \
                    len(name) > len(CHANNEL_SUFFIX):
                name = name[: -len(CHANNEL_SUFFIX)]
            return name
    return None
