"""Inference: the library of ``python -m lsnet_tf.predict`` (the command is `lsnet_tf.predict`).

Modules, in the order a case goes through them: `readers` (the inputs: DICOM folder, NIfTI,
``.npy``, ``.png`` -> `readers.Volume`), `predictors` (exported SavedModels and ``.tflite``
files, ensembles of them), `volume` (the slices of a volume through a predictor), `outputs`
(the summary and the overlays), `cases` (one case end to end, `cases.run`; many cases,
`cases.run_many`), `many` (finding and naming many cases), `batch` (running them: case folders,
``cases.csv``, resuming, the Apache Beam DoFn), `ensemble` (ensembles, test-time mirroring,
the agreement of their views), `review` (the review page of many cases, ``review.html``),
`dicom_seg` (the mask as a DICOM Segmentation). Importing this
package imports no TensorFlow, nor do its modules (a SavedModel loads TensorFlow when it loads).
"""
