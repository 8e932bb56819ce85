"""The evaluate command's library (``python -m lsnet_tf.evaluate``).

Two ways to evaluate: `slices` scores a trained run on a prepared dataset's slices (the paper's
protocol: per-slice DSC, precision and recall, the first stage's box mIoU, DSC by target size,
per-case 3-D DSC, parameters and FLOPs); `folder` scores a folder of NIfTI masks written by any
tool against a folder of labels (3-D DSC, HD95, volumes). `report` turns either result into
Markdown and names the output files. Each module's docstring defines what it computes.
"""
from __future__ import annotations


class EvaluationError(RuntimeError):
    """A run folder or a pair of folders cannot be evaluated (no config, no checkpoint, bad
    option, unpaired cases, masks on different grids)."""
